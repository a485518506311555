"""Evaluation: the benchmark recipes of matches, homographies and relative poses (metrics: ``geometry.metrics``)."""
