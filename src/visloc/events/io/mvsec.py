"""MVSEC's HDF5 files: events of ``<seq>_data.hdf5`` (lazily) and poses of ``<seq>_gt.hdf5``.

The layout is the one MVSEC's converter writes (``mvsec_hdf5`` branch, ``mvsec_h5py.py``):

- ``davis/<camera>/events``: float64 ``[N, 4]`` rows ``(x, y, t, p)``; ``t`` is the absolute ROS time
  in seconds (~1.5e9), ``p`` in {-1, +1} (the converter computes ``(polarity - 0.5) * 2``);
- ``davis/<camera>/pose`` float64 ``[K, 4, 4]`` camera-to-map transforms (Cartographer, loop-closed
  but *not* optimised in height) with ``davis/<camera>/pose_ts`` ``[K]`` absolute seconds.

The sensor is the DAVIS 346B, 346 x 260. The pose's map frame is local to the sequence, not UTM, and
two sequences' frames need not coincide. GPS is not in either file (it is only in the ``_gt.bag``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from visloc.events.io.common import ChunkBuilder, EventFileError, PolarityArg
from visloc.events.io.hdf5 import LazyEvents, open_h5, read_rows, require_dataset
from visloc.events.stream import EventStream, seconds_to_us
from visloc.events.windows import Trajectory

#: DAVIS 346B ``(W, H)``
MVSEC_SENSOR = (346, 260)
_X, _Y, _T, _P = range(4)


class MvsecEvents(LazyEvents):
    """The events of one MVSEC camera, read on demand (files are tens of GB).

    Args:
        path: ``<seq>_data.hdf5``.
        camera: ``"left"`` or ``"right"`` (``davis/<camera>/events``).
        sensor_size: ``(W, H)``; MVSEC's DAVIS 346B by default.
        origin_us: absolute µs of ``t = 0``; default: the first event's time. Pass the same origin to
            ``read_mvsec_trajectory`` to put poses on the events' clock.
        polarity: the file's encoding; MVSEC writes ``"pm1"``.

    Raises:
        EventFileError: the file is missing, not HDF5 (or truncated), or has no ``[N, 4]`` events dataset.
    """

    def __init__(self, path: str | Path, *, camera: Literal["left", "right"] = "left",
                 sensor_size: tuple[int, int] = MVSEC_SENSOR, origin_us: int | None = None,
                 polarity: PolarityArg = "pm1") -> None:
        super().__init__(path)
        self.sensor_size = sensor_size
        self._polarity: PolarityArg = polarity
        self.origin_us = 0
        try:
            self._ds = require_dataset(self._file, f"davis/{camera}/events", self.path, ndim=2, columns=4)
            first = int(self._read_t(0, 1)[0]) if len(self) else 0
        except EventFileError:
            self.close()
            raise
        self.origin_us = first if origin_us is None else int(origin_us)

    def __len__(self) -> int:
        return int(self._ds.shape[0])

    def _read_t(self, i0: int, i1: int) -> np.ndarray:
        t = read_rows(self._ds, (slice(i0, i1), _T), self.path)
        if not np.all(np.isfinite(t)):
            raise EventFileError(f"{self.path} (events {i0}..{i1 - 1}): non-finite times")
        return seconds_to_us(t) - np.int64(self.origin_us)

    def _read(self, i0: int, i1: int) -> EventStream:
        rows = read_rows(self._ds, slice(i0, i1), self.path)
        builder = ChunkBuilder(self.path, self.sensor_size, t_unit="s", polarity=self._polarity,
                               origin_us=self.origin_us)
        return builder.build(rows[:, _T], rows[:, _X], rows[:, _Y], rows[:, _P],
                             lambda i: f"{self.path} (event {i0 + i})")


def read_mvsec_poses(path: str | Path, *, camera: Literal["left", "right"] = "left") -> tuple[np.ndarray, np.ndarray]:
    """``davis/<camera>/pose`` and ``pose_ts`` of a ``<seq>_gt.hdf5``.

    Returns:
        ``times_us [K]`` int64 absolute µs and ``poses [K, 4, 4]`` float64 camera-to-map transforms.

    Raises:
        EventFileError: a key is missing, the shapes disagree, or a value is not finite.
    """
    with open_h5(path) as f:
        pose = read_rows(require_dataset(f, f"davis/{camera}/pose", path, ndim=3), slice(None), path)
        ts = read_rows(require_dataset(f, f"davis/{camera}/pose_ts", path, ndim=1), slice(None), path)
    if pose.shape[1:] != (4, 4) or len(pose) != len(ts):
        raise EventFileError(f"{path}: davis/{camera}/pose {pose.shape} and pose_ts {ts.shape} do not match "
                             "[K, 4, 4] and [K]")
    if not (np.all(np.isfinite(pose)) and np.all(np.isfinite(ts))):
        raise EventFileError(f"{path}: davis/{camera}/pose or pose_ts holds non-finite values")
    return seconds_to_us(ts), pose.astype(np.float64)


def read_mvsec_trajectory(path: str | Path, origin_us: int, *,
                          camera: Literal["left", "right"] = "left") -> Trajectory:
    """The planar camera positions of a ``<seq>_gt.hdf5`` on the events' clock.

    Args:
        path: ``<seq>_gt.hdf5``.
        origin_us: the events' origin (``MvsecEvents.origin_us``): the trajectory's times are relative to it.
        camera: ``davis/<camera>/pose``.

    Returns:
        A ``Trajectory`` of the map-frame ``(x, y)`` metres (the pose's translation; height is dropped,
        Cartographer does not optimise it) at each ``pose_ts``.

    Raises:
        EventFileError: see ``read_mvsec_poses``; or the pose times are not strictly increasing.
    """
    times_us, pose = read_mvsec_poses(path, camera=camera)
    steps = np.diff(times_us)
    if len(times_us) < 2 or np.any(steps <= 0):
        i = int(np.argmax(steps <= 0)) + 1 if len(steps) and np.any(steps <= 0) else 0
        what = f"pose_ts[{i}] does not increase" if len(times_us) >= 2 else f"{len(times_us)} pose(s), need 2"
        raise EventFileError(f"{path}: davis/{camera}/{what}")
    return Trajectory(times_us - np.int64(origin_us), pose[:, :2, 3])
