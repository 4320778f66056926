"""aot: align language models with AOT."""
__version__ = "0.1.0"
