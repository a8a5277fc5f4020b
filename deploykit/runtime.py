"""The import path of text-classification's torch-free runtime that generated Triton models, bentos
and older code use: ``deploykit.runtime.Runtime`` is ``deploykit.tasks.classification.runtime.Runtime``
(the session helpers live in ``deploykit.session``).
"""

from deploykit.session import available_cpus, available_providers, session  # noqa: F401
from deploykit.tasks.classification.runtime import Encoded, Runtime, softmax  # noqa: F401
