"""textgen: train, harden, sample and compare Transformer text generators from one recipe file."""

__version__ = "0.1.0"
