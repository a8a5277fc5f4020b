"""text-classification: a label per text, by an encoder with a sequence-classification head.

The folder's files are the task's hooks (see ``deploykit.tasks``); this package imports nothing.
"""
