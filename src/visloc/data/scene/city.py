"""The procedural city: a grid of streets and blocks of textured planes, with place ids and a split.

World frame: metres, x east, y north, z up; the ground is z = 0. See :mod:`visloc.data.scene.city_conf` for the
grid and the split districts. Every block has buildings on its four sides (random widths and heights, random
setbacks behind the facade line, side walls where neighbours' setbacks differ; corner buildings stand on the
facade line, so a block is closed); the city's outer streets face a ring of buildings (the perimeter, facing in);
every street segment has ground pieces on both of its halves (about ``ground_piece_m`` long), every intersection
one; double-sided boards stand on the pavements.

District borders: where a street segment of split S continues straight into a segment that is not S, a closing
wall (kind ``end``, as high as the highest building) stands across S's segment at the intersection's
edge; the buildings along a border street (between blocks of two splits) and the corner buildings at the
intersections where districts meet are as high as the highest building. Each district is then enclosed by walls
no other building rises above, and a view from a street of S sees S's places only (up to a pixel-wide crack
where two planes meet).

Each plane is one place (``plane.place_id == index``, ``places[i].id == i``); a board has two places (faces).
Textures are made when the renderer first asks for ``plane.mips`` and kept in the city's bounded cache
(``CityConf.texture_cache_mb``); building a city makes no texture.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from visloc.data.scene.city_build import CityBuilder
from visloc.data.scene.city_conf import CityConf
from visloc.data.scene.places import SPLITS, Block, Place, Split, Street
from visloc.data.scene.texture_cache import TextureCache
from visloc.data.scene.textures import SEASONS
from visloc.data.scene.world import Plane


@dataclass(frozen=True, eq=False)
class City:
    """The city of ``conf`` in ``season``; duck-type compatible with :class:`~visloc.data.scene.world.World`.

    Attributes:
        conf: the conf that built it (``width``, ``height``, ``near_m`` are the renderer's defaults).
        planes: textured rectangles; ``planes[k].place_id`` indexes ``places``.
        places: ``places[i].id == i``.
        streets: street segments between intersections (``streets[k].id == k``).
        blocks: ``blocks[b].id == b``.
        season: ``summer``, ``autumn`` or ``winter`` (ground and board textures; geometry and ids do not change).
        textures: the bounded cache the planes' textures live in.
    """

    conf: CityConf
    planes: tuple[Plane, ...]
    places: tuple[Place, ...]
    streets: tuple[Street, ...]
    blocks: tuple[Block, ...]
    season: str
    textures: TextureCache
    _split: np.ndarray = field(repr=False)

    def place_split(self) -> np.ndarray:
        """int8 ``[P]``: the split of every place, 0 train, 1 val, 2 test (indexes ``SPLITS``); a copy."""
        return self._split.copy()

    def places_of(self, split: Split) -> tuple[Place, ...]:
        """The places of ``split``, in id order."""
        _check_split(split)
        return tuple(p for p in self.places if p.split == split)

    def streets_of(self, split: Split) -> tuple[Street, ...]:
        """The street segments whose blocks all belong to ``split`` (the streets views of ``split`` stand on)."""
        _check_split(split)
        return tuple(s for s in self.streets if s.split == split)

    def blocks_of(self, split: Split) -> tuple[Block, ...]:
        """The blocks of ``split``."""
        _check_split(split)
        return tuple(b for b in self.blocks if b.split == split)

    @property
    def plane_place_ids(self) -> np.ndarray:
        """int32 ``[num_planes]``: the place id of every plane (maps a rendered plane index to a place id)."""
        return np.array([p.place_id for p in self.planes], np.int32)

    @property
    def street_length_m(self) -> float:
        """Total length of the street segments (metres; intersections not counted)."""
        return float(sum(np.hypot(s.end[0] - s.start[0], s.end[1] - s.start[1]) for s in self.streets))

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) of the city's outer facade lines (metres)."""
        xs = [s.end[0] for s in self.streets] + [s.start[0] for s in self.streets]
        ys = [s.end[1] for s in self.streets] + [s.start[1] for s in self.streets]
        w = max(s.width_m for s in self.streets)
        return min(xs) - w, min(ys) - w, max(xs) + w, max(ys) + w


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def build_city(conf: CityConf, season: str = "summer") -> City:
    """Build the city of ``conf``; the same conf gives the same geometry, ids and textures.

    Args:
        conf: the city conf (its ``seed`` drives every choice).
        season: ``summer``, ``autumn`` or ``winter``: swaps and tints the ground and board textures only.

    Returns:
        The city; no texture is made here (see :attr:`Plane.mips`).
    """
    if season not in SEASONS:
        raise ValueError(f"build_city: season must be one of {SEASONS}, got {season!r}")
    cache = TextureCache(int(conf.texture_cache_mb * 2**20))
    b = CityBuilder(conf, season, cache)
    b.build()
    split = np.array([SPLITS.index(p.split) for p in b.places], np.int8)
    return City(conf, tuple(b.planes), tuple(b.places), tuple(b.streets), tuple(b.blocks), season, cache, split)
