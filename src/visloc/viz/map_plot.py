"""A bird's-eye picture of a map: 3D points, the database trajectory and the localized queries.

The view is an orthographic projection onto a plane chosen from the data (``projection_basis``):

- with cameras, the plane is horizontal for upright cameras: "up" is minus the mean of the cameras'
  ``y`` axes in the world (image ``y`` points down in the COLMAP / OpenCV camera frame), and the
  picture's horizontal axis is the main direction (PCA) of the camera centres within that plane;
- without cameras, or when the cameras' ``y`` axes disagree (mean length < 0.5, e.g. a camera looking
  straight down), it is the plane of the two largest principal directions of all the points drawn.

Poses are ``cam_from_world`` (``visloc.io.poses.CameraPose``: ``R [3, 3]``, ``t [3]``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from visloc.io.atomic import atomic_path

if TYPE_CHECKING:
    from visloc.io.poses import CameraPose

MAX_POINTS = 200_000  # map points drawn at most (evenly subsampled)


@dataclass(frozen=True)
class MapPicture:
    """What ``plot_map`` drew and where.

    Attributes:
        path: The PNG file.
        size: ``(width, height)`` in pixels.
        basis: ``[2, 3]`` world directions of the picture's x (right) and y (up) axes.
        pixels: ``{"points" | "database" | "gt" | "pred" | "failed": [N, 2]}`` image coordinates
            ``(column, row)`` of what was drawn, row 0 at the top.
    """

    path: Path
    size: tuple[int, int]
    basis: np.ndarray
    pixels: dict[str, np.ndarray]


def _centres(poses: Mapping[str, CameraPose]) -> np.ndarray:
    """Camera centres ``-R^T t`` in the world ``[N, 3]``, in sorted name order."""
    return np.array([poses[n].center for n in sorted(poses)], dtype=np.float64).reshape(-1, 3)


def _axes(poses: Mapping[str, CameraPose], row: int) -> np.ndarray:
    """Camera axis ``row`` (0: x right, 1: y down, 2: z viewing) in the world ``[N, 3]``, sorted names."""
    return np.array([np.asarray(poses[n].R)[row] for n in sorted(poses)], dtype=np.float64).reshape(-1, 3)


def _principal(x: np.ndarray) -> np.ndarray:
    """Principal directions ``[3, 3]`` (rows, by decreasing variance) of ``x [N, 3]``; identity if degenerate."""
    if len(x) < 2:
        return np.eye(3)
    _, s, vt = np.linalg.svd(x - x.mean(0), full_matrices=True)
    return vt if s[0] > 0 else np.eye(3)


def projection_basis(
    centres: np.ndarray, down: np.ndarray | None = None, points: np.ndarray | None = None
) -> np.ndarray:
    """World directions ``[2, 3]`` (orthonormal rows) of the picture's x and y axes.

    Args:
        centres: Camera centres ``[N, 3]`` in the world (may be empty).
        down: The cameras' ``y`` axes in the world ``[N, 3]`` (rows of ``R``), or None.
        points: Other points ``[M, 3]`` (map points) used when the cameras do not fix the plane.

    Returns:
        ``[2, 3]``: with consistent ``down`` vectors, x is the main direction of the centres in the plane
        normal to up, and y = up x x (a right-handed top view); otherwise the two largest principal
        directions of the centres and points.
    """
    if down is not None and len(down):
        up = -np.mean(down, 0)
        if np.linalg.norm(up) >= 0.5:
            up = up / np.linalg.norm(up)
            flat = centres - np.outer(centres @ up, up)
            x = _principal(flat)[0]
            x = x - (x @ up) * up
            if np.linalg.norm(x) < 1e-6:  # one camera, or centres along up: any horizontal axis
                x = np.eye(3)[int(np.argmin(np.abs(up)))] - up * up[int(np.argmin(np.abs(up)))]
            x = x / np.linalg.norm(x)
            return np.stack([x, np.cross(up, x)])
    both = np.concatenate([centres.reshape(-1, 3), (points if points is not None else np.zeros((0, 3)))])
    return _principal(both)[:2]


def map_points(source: Any) -> np.ndarray:
    """``[N, 3]`` float64 points of a ``pycolmap.Reconstruction`` or of an array-like ``[N, 3]``."""
    if hasattr(source, "points3D"):
        pts = np.array([p.xyz for p in source.points3D.values()], dtype=np.float64)
        return pts.reshape(-1, 3)
    pts = np.asarray(source, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f"points: expected an array [N, 3] or a pycolmap.Reconstruction, got shape {list(pts.shape)}")
    return pts


def reconstruction_poses(rec: Any) -> dict[str, CameraPose]:
    """``{name: cam_from_world}`` of the registered images of a ``pycolmap.Reconstruction``."""
    from visloc.io.poses import CameraPose

    out = {}
    for image in rec.images.values():
        if image.has_pose:
            pose = image.cam_from_world()
            out[image.name] = CameraPose(np.asarray(pose.rotation.matrix()), np.asarray(pose.translation))
    return out


def plot_map(
    path: str | Path,
    points: Any = None,
    database: Mapping[str, CameraPose] | None = None,
    gt: Mapping[str, CameraPose] | None = None,
    pred: Mapping[str, CameraPose] | None = None,
    failed: Iterable[str] = (),
    size: tuple[int, int] = (1200, 900),
    title: str = "",
) -> MapPicture:
    """Draw a top-down picture of a map and localized queries; write it as a PNG atomically.

    Args:
        path: Output PNG.
        points: Map points: a ``pycolmap.Reconstruction`` (its registered images also become the database
            trajectory when ``database`` is None) or an array ``[N, 3]``; None for none.
        database: Database poses ``{name: cam_from_world}``: centres joined in name order, with short
            ticks along each viewing direction.
        gt: Ground-truth query poses: hollow green circles.
        pred: Localized query poses: blue crosses, with a red line to the ground truth of the same query.
        failed: Queries that failed (and any ``gt`` query without a prediction): red x at the ground truth.
        size: ``(width, height)`` of the PNG in pixels.
        title: Title of the picture.

    Returns:
        Where each kind of item was drawn, in pixels.
    """
    if len(size) != 2 or min(size) < 50:
        raise ValueError(f"size: expected (width, height) of at least 50 pixels each, got {size}")
    if points is not None and database is None and hasattr(points, "images"):
        database = reconstruction_poses(points)
    pts = map_points(points) if points is not None else np.zeros((0, 3))
    if len(pts) > MAX_POINTS:
        pts = pts[np.linspace(0, len(pts) - 1, MAX_POINTS).astype(int)]
    database, gt = dict(database or {}), dict(gt or {})
    failed_set = set(failed)
    pred = {n: q for n, q in (pred or {}).items() if n not in failed_set}
    failed_names = sorted(n for n in gt if n in failed_set or n not in pred)
    cams = [p for p in (database, gt, pred) if p]
    centres = np.concatenate([_centres(p) for p in cams]) if cams else np.zeros((0, 3))
    if not len(centres) and not len(pts):
        raise ValueError(f"{path}: nothing to draw (no points, no cameras)")
    basis = projection_basis(centres, np.concatenate([_axes(p, 1) for p in cams]) if cams else None, pts)
    paired = sorted(set(gt) & set(pred))
    layers = {
        "points": pts @ basis.T,
        "database": _centres(database) @ basis.T,
        "gt": _centres(gt) @ basis.T,
        "pred": _centres(pred) @ basis.T,
        "failed": _centres({n: gt[n] for n in failed_names}) @ basis.T,
    }
    errors = np.stack(
        [_centres({n: gt[n] for n in paired}) @ basis.T, _centres({n: pred[n] for n in paired}) @ basis.T], 1
    )
    bounds = _bounds(centres @ basis.T, layers["points"])
    ticks = _axes(database, 2) @ basis.T * 0.03 * float(np.max(bounds[1] - bounds[0]))
    return _draw(Path(path), size, title, basis, layers, errors, ticks, bounds)


def _bounds(cams: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """``[2, 2]`` (min, max) of the view: every camera, and the map points but their 1 % outliers each side."""
    parts = [cams]
    if len(pts):
        parts.append(np.percentile(pts, [1, 99], axis=0))
    both = np.concatenate(parts)
    lo, hi = both.min(0), both.max(0)
    pad = 0.05 * max(float(np.max(hi - lo)), 1e-6)
    return np.stack([lo - pad, hi + pad])


def _draw(
    path: Path,
    size: tuple[int, int],
    title: str,
    basis: np.ndarray,
    layers: dict[str, np.ndarray],
    errors: np.ndarray,
    ticks: np.ndarray,
    bounds: np.ndarray,
) -> MapPicture:
    """Render ``layers`` (2D, in picture axes) with matplotlib's Agg canvas (no pyplot, no global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    dpi = 100
    fig = Figure(figsize=(size[0] / dpi, size[1] / dpi), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    _plot_layers(ax, layers, errors, ticks)
    ax.set_xlim(bounds[0, 0], bounds[1, 0])
    ax.set_ylim(bounds[0, 1], bounds[1, 1])
    ax.set_aspect("equal", adjustable="box")
    ax.set_xlabel("map units")
    ax.set_ylabel("map units")
    ax.set_title(title or "map (top view)")
    if any(len(v) for k, v in layers.items() if k != "points"):  # below the axes: it hides no data
        fig.legend(loc="outside lower center", ncols=3, fontsize="small", frameon=False)
    fig.canvas.draw()
    pixels = {}
    for name, xy in layers.items():
        disp = ax.transData.transform(xy) if len(xy) else np.zeros((0, 2))
        pixels[name] = np.stack([disp[:, 0], size[1] - disp[:, 1]], 1)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return MapPicture(path, size, basis, pixels)


def _plot_layers(ax: Any, layers: dict[str, np.ndarray], errors: np.ndarray, ticks: np.ndarray) -> None:
    """Points grey, database trajectory dark grey with viewing ticks, queries green / blue / red."""
    from matplotlib.collections import LineCollection

    if len(layers["points"]):
        ax.scatter(*layers["points"].T, s=1, c="0.6", linewidths=0, rasterized=True)
    db = layers["database"]
    if len(db):
        ax.plot(*db.T, "-", color="0.2", lw=0.8, label="database cameras")
        # segments as a list of [2, 2] arrays: matplotlib's stubs take a sequence (it accepts the array too)
        ax.add_collection(LineCollection(list(np.stack([db, db + ticks], 1)), colors="0.2", linewidths=0.8))
    if len(errors):
        ax.add_collection(LineCollection(list(errors), colors="tab:red", linewidths=1.0, label="position error"))
    if len(layers["gt"]):
        ax.scatter(*layers["gt"].T, s=30, facecolors="none", edgecolors="tab:green", label="query, ground truth")
    if len(layers["pred"]):
        ax.scatter(*layers["pred"].T, s=30, marker="+", c="tab:blue", label="query, localized")
    if len(layers["failed"]):
        ax.scatter(*layers["failed"].T, s=40, marker="x", c="tab:red", label="query, failed")
