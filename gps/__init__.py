"""Gradient-based Parameter Selection (GPS) for parameter-efficient fine-tuning of timm models."""

__version__ = "0.1.0"
