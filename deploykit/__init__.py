"""deploykit: fine-tune, export, verify and serve Hugging Face text classifiers."""

__version__ = "0.1.0"
