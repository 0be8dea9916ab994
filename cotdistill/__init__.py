"""cotdistill: distil chain-of-thought reasoning from large LMs into small ones."""

__version__ = "0.1.0"
