"""question-answering: extractive reading comprehension (SQuAD v1.1/v2.0 style) by an encoder with a span
head: a question and a context in, the answer's text and character offsets in the context out (or no
answer), contexts of any length cut into overlapping windows.

The folder's files are the task's hooks (see ``deploykit.tasks``); this package imports nothing.
"""
