"""text-generation: a completion per prompt, by a decoder-only language model with its KV cache.

The folder's files are the task's hooks (see ``deploykit.tasks``); this package imports nothing.
"""
