"""Typed, frozen configuration of the procedural city, and the layout of its blocks and split districts.

The city is a grid: ``num_streets_x`` east-west streets (rows) and ``num_streets_y`` north-south streets
(columns) cross at intersections; between them lie ``(num_streets_y - 1) x (num_streets_x - 1)`` blocks.
Block ``(i, j)`` (column ``i`` from the west, row ``j`` from the south) has id ``j * num_block_columns + i``.

Split districts: the blocks are visited in a serpentine order (column by column, or row by row, from a corner;
the order follows ``seed``) and cut into three contiguous runs of ``split`` fractions: train, val, test. Each
district is then a connected area, and the streets between its blocks are its own.

Every check raises ``ConfError("CityConf.<field>: <problem>, got <value>")`` (a ``ValueError``), so a conf that
cannot make a valid world fails at once, naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from visloc.conf import ConfError
from visloc.data.scene.places import SPLITS, Split


def _check(ok: bool, field: str, problem: str, value: object) -> None:
    if not ok:
        raise ConfError(f"CityConf.{field}: {problem}, got {value!r}")


def _check_range(conf: CityConf, field: str, lo: float, hi: float) -> None:
    """``field`` is a (min, max) pair with ``lo <= min <= max <= hi``."""
    pair = getattr(conf, field)
    _check(len(pair) == 2 and lo <= pair[0] <= pair[1] <= hi, field, f"must be (min, max) with {lo} <= min <= max "
           f"<= {hi}", pair)


@dataclass(frozen=True)
class CityConf:
    """The city's layout, its texture resolution, its split and its default camera; everything follows ``seed``.

    World frame: metres, x east, y north, z up; the ground is z = 0.

    Attributes:
        seed: seed of every random choice (layout, sizes, textures, split orientation), >= 0.
        num_streets_x: east-west streets (rows of the grid), >= 2.
        num_streets_y: north-south streets (columns of the grid), >= 2.
        block_length_m: block size along x (between the facade lines of two north-south streets).
        block_depth_m: block size along y.
        street_width_m: (min, max) width of a street (facade line to facade line), drawn per street.
        facade_width_m: (min, max) width of a building along its street.
        facade_height_m: (min, max) height of a building; closing walls get the max.
        setback_m: maximum random setback of a facade behind its facade line (corner buildings have none).
        px_per_m: facade and board texture resolution (texels per metre).
        ground_px_per_m: ground texture resolution (texels per metre).
        ground_piece_m: ground is cut into pieces of about this length along each street (one place each).
        boards_per_block: double-sided boards standing on the pavements around each block.
        split: (train, val, test) fractions of the blocks; each must give at least one block and one street.
        width: default image width in pixels (the renderer's default size).
        height: default image height in pixels.
        focal: default focal length in pixels.
        near_m: near clipping distance (metres).
        far_m: far clipping distance (metres).
        eye_height_m: camera height above the ground for street views.
        texture_cache_mb: bound of the city's texture cache (MiB of texture pyramids held at once).
        extra_photos: use the photos of Debian's opencv-doc too when installed (textures then differ from a
            machine without them; False gives the same city everywhere).
    """

    seed: int = 0
    num_streets_x: int = 5
    num_streets_y: int = 5
    block_length_m: float = 90.0
    block_depth_m: float = 60.0
    street_width_m: tuple[float, float] = (10.0, 16.0)
    facade_width_m: tuple[float, float] = (6.0, 12.0)
    facade_height_m: tuple[float, float] = (7.0, 22.0)
    setback_m: float = 1.0
    px_per_m: float = 32.0
    ground_px_per_m: float = 16.0
    ground_piece_m: float = 30.0
    boards_per_block: int = 2
    split: tuple[float, float, float] = (0.6, 0.2, 0.2)
    width: int = 640
    height: int = 480
    focal: float = 500.0
    near_m: float = 0.05
    far_m: float = 150.0
    eye_height_m: float = 1.6
    texture_cache_mb: float = 512.0
    extra_photos: bool = True

    def __post_init__(self) -> None:
        self._check_grid()
        self._check_buildings()
        self._check_textures()
        self._check_camera()
        self._check_split()

    def _check_grid(self) -> None:
        _check(self.seed >= 0, "seed", "must be >= 0", self.seed)
        for field in ("num_streets_x", "num_streets_y"):
            value = getattr(self, field)
            _check(2 <= value <= 64, field, "must be in [2, 64] (two streets bound one row of blocks)", value)
        _check(20.0 <= self.block_length_m <= 1000.0, "block_length_m", "must be in [20, 1000]", self.block_length_m)
        _check(20.0 <= self.block_depth_m <= 1000.0, "block_depth_m", "must be in [20, 1000]", self.block_depth_m)
        _check_range(self, "street_width_m", 4.0, 100.0)

    def _check_buildings(self) -> None:
        _check_range(self, "facade_width_m", 2.0, 100.0)
        _check(self.facade_width_m[0] <= min(self.block_length_m, self.block_depth_m) / 2, "facade_width_m",
               "min must be <= half the smaller block side", self.facade_width_m)
        _check_range(self, "facade_height_m", 2.0, 300.0)
        _check(0.0 <= self.setback_m <= self.facade_width_m[0] / 2, "setback_m",
               "must be in [0, facade_width_m min / 2]", self.setback_m)
        _check(0 <= self.boards_per_block <= 64, "boards_per_block", "must be in [0, 64]", self.boards_per_block)

    def _check_textures(self) -> None:
        _check(4.0 <= self.px_per_m <= 256.0, "px_per_m", "must be in [4, 256]", self.px_per_m)
        _check(2.0 <= self.ground_px_per_m <= 256.0, "ground_px_per_m", "must be in [2, 256]", self.ground_px_per_m)
        _check(5.0 <= self.ground_piece_m <= 1000.0, "ground_piece_m", "must be in [5, 1000]", self.ground_piece_m)
        _check(self.texture_cache_mb >= 8.0, "texture_cache_mb", "must be >= 8", self.texture_cache_mb)

    def _check_camera(self) -> None:
        _check(32 <= self.width <= 8192, "width", "must be in [32, 8192] pixels", self.width)
        _check(32 <= self.height <= 8192, "height", "must be in [32, 8192] pixels", self.height)
        _check(self.focal > 0.0, "focal", "must be > 0", self.focal)
        _check(self.near_m > 0.0, "near_m", "must be > 0", self.near_m)
        _check(self.far_m > self.near_m, "far_m", f"must be > near_m = {self.near_m}", self.far_m)
        _check(0.2 <= self.eye_height_m < self.facade_height_m[0], "eye_height_m",
               "must be in [0.2, facade_height_m min)", self.eye_height_m)

    def _check_split(self) -> None:
        fr = self.split
        _check(len(fr) == 3 and all(f >= 0.0 for f in fr) and abs(sum(fr) - 1.0) < 1e-6, "split",
               "must be 3 fractions (train, val, test) >= 0 summing to 1", fr)
        counts = split_counts(self)
        for name, count in zip(SPLITS, counts, strict=True):
            _check(count >= 1, "split", f"gives {name} no block of the {self.num_blocks} blocks", fr)
        splits = block_splits(self)
        for name in SPLITS:
            _check(any(s == name for s in segment_splits(self, splits)), "split",
                   f"gives {name} no street of its own (its blocks touch no common street)", fr)

    @property
    def num_block_columns(self) -> int:
        """Blocks along x (between the north-south streets)."""
        return self.num_streets_y - 1

    @property
    def num_block_rows(self) -> int:
        """Blocks along y (between the east-west streets)."""
        return self.num_streets_x - 1

    @property
    def num_blocks(self) -> int:
        """All blocks of the grid."""
        return self.num_block_columns * self.num_block_rows


def split_counts(conf: CityConf) -> tuple[int, int, int]:
    """Blocks of train, val and test: ``round(fraction * num_blocks)`` for train and val, the rest for test."""
    n = conf.num_blocks
    train = round(conf.split[0] * n)
    val = min(round(conf.split[1] * n), n - train)
    return train, val, n - train - val


def serpentine(conf: CityConf) -> list[tuple[int, int]]:
    """Block cells ``(i, j)`` in the serpentine visiting order of the split (orientation from ``seed``)."""
    rng = np.random.default_rng([conf.seed, 7])
    by_columns, flip_i, flip_j = (bool(b) for b in rng.integers(0, 2, 3))
    nc, nr = conf.num_block_columns, conf.num_block_rows
    outer, inner = (nc, nr) if by_columns else (nr, nc)
    order = []
    for a in range(outer):
        for b in (range(inner) if a % 2 == 0 else range(inner - 1, -1, -1)):
            i, j = (a, b) if by_columns else (b, a)
            order.append((nc - 1 - i if flip_i else i, nr - 1 - j if flip_j else j))
    return order


def block_splits(conf: CityConf) -> tuple[Split, ...]:
    """The split of every block, indexed by block id (``j * num_block_columns + i``)."""
    counts = split_counts(conf)
    out: list[Split] = ["train"] * conf.num_blocks
    k = 0
    for name, count in zip(SPLITS, counts, strict=True):
        for i, j in serpentine(conf)[k:k + count]:
            out[j * conf.num_block_columns + i] = name
        k += count
    return tuple(out)


def segment_blocks(conf: CityConf) -> list[tuple[str, int, int, tuple[int, ...]]]:
    """Street segments in id order: ``(axis, street index, position, block ids)``.

    ``axis`` is ``"x"`` for a segment of east-west street ``index`` (``position`` = block column), ``"y"`` for
    north-south street ``index`` (``position`` = block row). East-west segments come first, row by row.
    """
    nc, nr = conf.num_block_columns, conf.num_block_rows
    out: list[tuple[str, int, int, tuple[int, ...]]] = []
    for j in range(nr + 1):
        for i in range(nc):
            out.append(("x", j, i, tuple(jj * nc + i for jj in (j - 1, j) if 0 <= jj < nr)))
    for i in range(nc + 1):
        for j in range(nr):
            out.append(("y", i, j, tuple(j * nc + ii for ii in (i - 1, i) if 0 <= ii < nc)))
    return out


def segment_splits(conf: CityConf, splits: tuple[Split, ...]) -> list[Split | None]:
    """The split of every street segment (that of all its blocks), None on a district border."""
    out: list[Split | None] = []
    for *_, blocks in segment_blocks(conf):
        first: Split = splits[blocks[0]]
        out.append(first if all(splits[b] == first for b in blocks) else None)
    return out
