"""text-length's runtime: the classifier's (``Runtime`` reads a LengthBuckets head as a classifier's)."""

from deploykit.tasks.classification.runtime import Runtime  # noqa: F401
