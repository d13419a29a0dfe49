"""Disruptive Autoencoders (DAE) pretraining for MONAI: transforms, networks, losses and engine pieces."""

__version__ = "0.1.0"
