"""Visual place recognition metrics: recall@N with positives within a radius in UTM metres.

The protocol of NetVLAD and of the visual geo-localization benchmark (Berton et al., CVPR 2022):
a database image is a positive of a query when their UTM positions lie within ``radius`` metres
(25 m by default), and recall@N is the fraction of queries with at least one positive among their
N first predictions. Positions are read from ``[N, 2]`` arrays (east, north) or from the benchmark's
file names ``@UTM_east@UTM_north@UTM_zone_number@UTM_zone_letter@lat@lon@pano_id@tile_num@heading
@pitch@roll@height@timestamp@note@extension``.

Unlike the benchmark's ``test.py``, which divides by every query, queries without any positive are
left out of recall@N and counted apart (``RecallResult.without_positives``); with ``E`` of them out of
``Q``, the benchmark's value is ``recall * (Q - E) / Q``.

The radius and recall functions live in ``retrieval.recall`` (so that training recipes, a layer beside
this one, use them too) and are re-exported here; this module adds the benchmark's file names.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path, PurePath

import numpy as np

from visloc.data.errors import DatasetError
from visloc.retrieval.recall import (  # noqa: F401  (re-exported: the metrics live in retrieval/)
    RECALL_NS,
    RecallResult,
    check_utm,
    positives_within_radius,
    recall_at_n,
)

_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def parse_vg_name(path: str | PurePath) -> tuple[float, float]:
    """UTM ``(east, north)`` in metres from a visual geo-localization benchmark file name.

    The name (the last path component) is ``@UTM_east@UTM_north@UTM_zone_number@UTM_zone_letter@lat
    @lon@pano_id@tile_num@heading@pitch@roll@height@timestamp@note@extension``; only east and north
    are required, the other fields may be empty or missing.

    Raises:
        ValueError: The name does not start with ``@`` or its east / north are not decimal numbers;
            the message names ``path``.
    """
    fields = PurePath(path).name.split("@")
    if len(fields) < 3 or fields[0] != "":
        raise ValueError(f"{path}: not a visual geo-localization name '@UTM_east@UTM_north@...'")
    for axis, value in (("east", fields[1]), ("north", fields[2])):
        if not _NUMBER.fullmatch(value):
            raise ValueError(f"{path}: UTM {axis} {value!r} is not a decimal number")
    return float(fields[1]), float(fields[2])


def utm_from_names(names: Sequence[str | PurePath]) -> np.ndarray:
    """UTM positions ``[N, 2]`` (east, north) of visual geo-localization file names."""
    return np.array([parse_vg_name(n) for n in names], dtype=np.float64).reshape(-1, 2)


def read_vg_names(path: str | Path) -> np.ndarray:
    """UTM positions ``[N, 2]`` of the names listed in a text file, one per line (blank lines skipped).

    Raises:
        InputError: ``path`` does not exist or is not text.
        DatasetError: A name is malformed; the message names ``path`` and the name.
    """
    from visloc.io.arrays import read_lines

    names = read_lines(path, "image names")
    try:
        return utm_from_names(names)
    except ValueError as e:
        raise DatasetError(f"{path}: {e}") from e
