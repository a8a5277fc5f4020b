"""text-length: a length bucket per text (how many words it has), the task that proves a task is a
folder. Registered from outside the package (``DEPLOYKIT_TASKS=lengthtask``; tests/conftest.py
sets it): this folder and the ``register`` call below are all of it. It reuses the
text-classification task's model, runtime and export where they fit, through their public names.
"""

from deploykit import tasks

tasks.register(tasks.Task("text-length", "lengthtask", "a length bucket per text, by its word count (a test task)",
                          metrics=("accuracy", "macro_f1", "loss")))
