"""chatforge: train a ChatGPT-style assistant from nothing, the Hugging Face way."""

__version__ = "0.1.0"
