"""Shared training data building blocks: image sources (``images``) and augmentation (``augment``)."""
