"""Places of the built-in city: stable integer ids for facades, boards, ground segments, streets and blocks.

A *place* is one thing a camera can see and a dataset can label: a facade, a side wall, a board, a ground
segment, an end wall. Its ``id`` is stable for a given ``CityConf`` (same conf, same ids). Every place belongs
to one street block (``block_id``; ground segments and boards to the block of the pavement they lie on) and so
to one split: the city's blocks are divided into ``train`` / ``val`` / ``test`` (``CityConf.split``), and a place
never belongs to two splits. World frame: metres, x east, y north, z up; the ground is z = 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")
PlaceKind = Literal["facade", "side", "board", "ground", "end"]


@dataclass(frozen=True)
class Place:
    """One labelled thing of the city.

    Attributes:
        id: stable integer id, ``0 .. len(city.places) - 1`` (the index of the place in ``city.places``).
        kind: facade, side (wall between setbacks), board, ground (segment), end (wall closing a street).
        block_id: the street block the place belongs to (its split comes from it).
        street_id: the street the place faces or lies on, -1 for none.
        landmark_id: the landmark class of a facade (a facade, or a group of adjacent facades of one building
            style), -1 for places that are no landmark (ground, side walls).
        split: ``train``, ``val`` or ``test`` (the split of ``block_id``).
        center: (x, y, z) world centre of the place (metres).
        normal: (x, y, z) unit normal, pointing to where it is seen from (the street).
        size_m: (width, height) in metres.
    """

    id: int
    kind: PlaceKind
    block_id: int
    street_id: int
    landmark_id: int
    split: Split
    center: tuple[float, float, float]
    normal: tuple[float, float, float]
    size_m: tuple[float, float]


@dataclass(frozen=True)
class Street:
    """A straight street segment between two ends (intersections or the city's edge).

    Attributes:
        id: stable integer id.
        start: (x, y) world position of the centre line's start (metres).
        end: (x, y) world position of the centre line's end.
        width_m: distance between its two facade lines.
        block_ids: the blocks along it (one or two per side).
        split: the split of every block along it, or None when they differ (a street on a split border).
    """

    id: int
    start: tuple[float, float]
    end: tuple[float, float]
    width_m: float
    block_ids: tuple[int, ...]
    split: Split | None


@dataclass(frozen=True)
class Block:
    """A city block: the buildings between four streets.

    Attributes:
        id: stable integer id.
        bounds: (x0, y0, x1, y1) of the block's facade lines (metres, x0 < x1, y0 < y1).
        split: the split the block (and every place of it) belongs to.
    """

    id: int
    bounds: tuple[float, float, float, float]
    split: Split
