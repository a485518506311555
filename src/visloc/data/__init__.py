"""Datasets with ground truth: loaders for data installed on this machine and built-in pairs."""
