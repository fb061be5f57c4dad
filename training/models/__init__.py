"""Built-in architectures; importing this package registers them (see training/registry.py)."""

from training.models import archs, lenet

__all__ = ["archs", "lenet"]
