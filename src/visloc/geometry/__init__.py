"""Two-view geometry: robust estimators (OpenCV USAC / poselib) and transforms."""

from visloc.geometry.estimators import ESTIMATORS, Estimate, EstimatorConf

__all__ = ["ESTIMATORS", "Estimate", "EstimatorConf"]
