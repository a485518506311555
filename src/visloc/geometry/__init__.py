"""Two-view geometry: robust estimators (OpenCV USAC / poselib), transforms and the match / pose metrics."""

from visloc.geometry.estimators import ESTIMATORS, Estimate, EstimatorConf

__all__ = ["ESTIMATORS", "Estimate", "EstimatorConf"]
