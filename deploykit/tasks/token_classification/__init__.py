"""token-classification: a label per word (named entities, PII, product attributes, skills), by an
encoder with a token-classification head, served as entities with character offsets.

The folder's files are the task's hooks (see ``deploykit.tasks``); this package imports nothing.
"""
