"""fastadapt: meta-learning ("learning to learn") in PyTorch."""
__version__ = "0.1.0"
