"""model-pull: fetch, verify and package Hugging Face weights into immutable entries."""

__version__ = "0.1.0"
