"""thaw: sweep how deep to unfreeze a pretrained CNN, and at what learning rate."""

__version__ = "0.1.0"
