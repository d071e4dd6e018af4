"""scl: vision-language pre-training with Semantic Completion Learning."""

__version__ = "0.1.0"
