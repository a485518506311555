"""Evaluation: metrics of matches, homographies and relative poses, and their benchmark recipes."""
