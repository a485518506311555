"""The geometry of the procedural city: streets, blocks, facades, ground, boards, closing walls (see city.py).

:class:`CityBuilder` lays the grid of :mod:`visloc.data.scene.city_conf` out in metres and appends one place and
one plane at a time, so a place's id is its index and a plane's ``place_id`` is that index too. All random
choices of the geometry come from ``default_rng([seed, 1])`` in a fixed order (the season is not drawn from it).
"""

from __future__ import annotations

import numpy as np

from visloc.data.scene.city_conf import CityConf, block_splits, segment_blocks, segment_splits
from visloc.data.scene.places import Block, Place, PlaceKind, Split, Street
from visloc.data.scene.texture_cache import TextureCache
from visloc.data.scene.textures import CachedMips, TextureSpec
from visloc.data.scene.world import Plane, plane_frame

_Z = np.array([0.0, 0.0, 1.0])
_DOWN = (0.0, 0.0, -1.0)
#: seed streams of the texture specs, per kind
_STREAM = {"facade": 11, "side": 12, "end": 13, "board": 14, "ground": 15}
#: smallest texture side (texels)
_MIN_TEX = 8
#: closing walls reach this far (metres) into the buildings beside them and under the ground: no crack to see through
_SEAL = 0.05
#: distance of a board from the facade line, metres
_BOARD_INSET = 1.0


class CityBuilder:
    """Appends the places and planes of one city (use :func:`visloc.data.scene.city.build_city`)."""

    def __init__(self, conf: CityConf, season: str, cache: TextureCache) -> None:
        self.conf, self.season, self.cache = conf, season, cache
        self.rng = np.random.default_rng([conf.seed, 1])
        self.places: list[Place] = []
        self.planes: list[Plane] = []
        self.streets: list[Street] = []
        self.blocks: list[Block] = []
        self.num_landmarks = 0
        self.splits = block_splits(conf)
        self.street_splits = segment_splits(conf, self.splits)
        nc, nr = conf.num_block_columns, conf.num_block_rows
        self.width_x = self.rng.uniform(*conf.street_width_m, nr + 1)  # east-west street j: its width (along y)
        self.width_y = self.rng.uniform(*conf.street_width_m, nc + 1)  # north-south street i: its width (along x)
        self.x_street = np.concatenate([[0.0], np.cumsum(self.width_y[:-1] + conf.block_length_m)])
        self.y_street = np.concatenate([[0.0], np.cumsum(self.width_x[:-1] + conf.block_depth_m)])

    # -- ids and lookups -------------------------------------------------------------------------------------------
    def block_id(self, i: int, j: int) -> int:
        """Id of block column ``i``, row ``j``; -1 outside the grid."""
        nc, nr = self.conf.num_block_columns, self.conf.num_block_rows
        return j * nc + i if 0 <= i < nc and 0 <= j < nr else -1

    def street_id(self, axis: str, index: int, pos: int) -> int:
        """Id of the segment ``pos`` of east-west (``axis`` x) or north-south (y) street ``index``; -1 outside."""
        nc, nr = self.conf.num_block_columns, self.conf.num_block_rows
        if axis == "x":
            return index * nc + pos if 0 <= index <= nr and 0 <= pos < nc else -1
        return (nr + 1) * nc + index * nr + pos if 0 <= index <= nc and 0 <= pos < nr else -1

    def tex_size(self, width_m: float, height_m: float, px_per_m: float) -> tuple[int, int]:
        """(w, h) texels of a rectangle."""
        return max(_MIN_TEX, round(width_m * px_per_m)), max(_MIN_TEX, round(height_m * px_per_m))

    # -- appending -------------------------------------------------------------------------------------------------
    def add(self, kind: PlaceKind, block: int, street: int, landmark: int, corner: np.ndarray, u: np.ndarray,
            v: tuple[float, float, float], size_m: tuple[float, float], normal: np.ndarray, *,
            style: int = -1, pavement_m: float = 0.0) -> int:
        """Append a place and its plane; ``corner`` is the texture's top-left corner. Returns the place id."""
        pid = len(self.places)
        o, u_arr, v_arr = plane_frame(f"{kind}_{pid}", corner, u, v, size_m)
        center = o + 0.5 * size_m[0] * u_arr + 0.5 * size_m[1] * v_arr
        split: Split = self.splits[block]
        self.places.append(Place(pid, kind, block, street, landmark, split, _tuple3(center), _tuple3(normal),
                                 (float(size_m[0]), float(size_m[1]))))
        px = self.conf.ground_px_per_m if kind == "ground" else self.conf.px_per_m
        size = self.tex_size(size_m[0], size_m[1], px)
        seed = (self.conf.seed, _STREAM[kind], pid)
        style_seed = (self.conf.seed, 100, style) if style >= 0 else seed
        season = self.season if kind in ("ground", "board") else "summer"
        rows = 0 if pavement_m == 0 else int(np.sign(pavement_m) * max(1, round(abs(pavement_m) * px)))
        spec = TextureSpec(kind, seed, style_seed, size, px, season, self.conf.extra_photos, rows)
        self.planes.append(Plane(f"{kind}_{pid}", o, u_arr, v_arr, (float(size_m[0]), float(size_m[1])), size,
                                 CachedMips(self.cache, spec), pid))
        return pid

    def new_landmark(self) -> int:
        """A fresh landmark id."""
        self.num_landmarks += 1
        return self.num_landmarks - 1

    # -- the city ---------------------------------------------------------------------------------------------------
    def build(self) -> None:
        """Blocks (with their buildings), perimeter, streets (with their ground), intersections, boards, walls."""
        conf = self.conf
        for j in range(conf.num_block_rows):
            for i in range(conf.num_block_columns):
                self.add_block(i, j)
        self.add_perimeter()
        self.add_streets()
        self.add_intersections()
        for b in self.blocks:
            self.add_boards(b)
        self.add_closing_walls()

    def block_sides(self, i: int, j: int) -> list[tuple[np.ndarray, np.ndarray, float, int]]:
        """The four sides of block (i, j): (start corner [3], outward normal [3], length, street id)."""
        x0, x1 = self.x_street[i] + self.width_y[i], self.x_street[i + 1]
        y0, y1 = self.y_street[j] + self.width_x[j], self.y_street[j + 1]
        return [(np.array([x0, y0, 0.0]), np.array([0.0, -1.0, 0.0]), x1 - x0, self.street_id("x", j, i)),
                (np.array([x1, y0, 0.0]), np.array([1.0, 0.0, 0.0]), y1 - y0, self.street_id("y", i + 1, j)),
                (np.array([x1, y1, 0.0]), np.array([0.0, 1.0, 0.0]), x1 - x0, self.street_id("x", j + 1, i)),
                (np.array([x0, y1, 0.0]), np.array([-1.0, 0.0, 0.0]), y1 - y0, self.street_id("y", i, j))]

    def add_block(self, i: int, j: int) -> None:
        """Block (i, j) and the buildings on its four sides."""
        bid = self.block_id(i, j)
        x0, x1 = self.x_street[i] + self.width_y[i], self.x_street[i + 1]
        y0, y1 = self.y_street[j] + self.width_x[j], self.y_street[j + 1]
        self.blocks.append(Block(bid, (float(x0), float(y0), float(x1), float(y1)), self.splits[bid]))
        corners = [(i, j), (i + 1, j), (i + 1, j + 1), (i, j + 1)]  # intersections at the sides' start corners
        for k, (start, normal, length, street) in enumerate(self.block_sides(i, j)):
            if self.street_splits[street] is None:  # a district border: the whole row is as high as the highest
                tall = (True, True, True)
            else:
                tall = (self.border_corner(corners[k], bid), False, self.border_corner(corners[(k + 1) % 4], bid))
            self.add_row(bid, street, start, normal, length, setbacks=True, tall=tall)

    def border_corner(self, intersection: tuple[int, int], block: int) -> bool:
        """True when a block at ``intersection`` (I, J) belongs to another split than ``block``."""
        ii, jj = intersection
        others = (self.block_id(a, b) for a in (ii - 1, ii) for b in (jj - 1, jj))
        return any(o >= 0 and self.splits[o] != self.splits[block] for o in others)

    def add_row(self, block: int, street: int, start: np.ndarray, normal: np.ndarray, length: float, *,
                setbacks: bool, tall: tuple[bool, bool, bool] = (False, False, False)) -> None:
        """Buildings along a facade line from ``start`` (seen from the street, left to right), ``length`` long.

        Corner buildings (first and last) stand on the facade line; the others are set back at random, with a
        side wall (as high as the building in front) where two neighbours' setbacks differ. ``tall`` = (first,
        middle ones, last): which are as high as the highest building (rows along a district border and corners
        where districts meet, so that no street view looks over them into another district).
        """
        conf = self.conf
        u = np.cross(_Z, normal)
        widths = _widths(self.rng, length, conf.facade_width_m)
        n = len(widths)
        depths = [0.0 if (k in (0, n - 1) or not setbacks) else float(self.rng.uniform(0.0, conf.setback_m))
                  for k in range(n)]
        heights = self.rng.uniform(*conf.facade_height_m, n)
        if tall[1]:
            heights[1:-1] = conf.facade_height_m[1]
        heights[0] = conf.facade_height_m[1] if tall[0] else heights[0]
        heights[-1] = conf.facade_height_m[1] if tall[2] else heights[-1]
        s, landmark, group = 0.0, -1, 0
        for k in range(n):
            if landmark < 0 or group >= 3 or self.rng.random() < 0.6:
                landmark, group = self.new_landmark(), 0
            group += 1
            corner = start + u * s - normal * depths[k] + _Z * heights[k]
            self.add("facade", block, street, landmark, corner, u, _DOWN, (widths[k], heights[k]), normal,
                     style=landmark)
            s += widths[k]
            if k + 1 < n and abs(depths[k] - depths[k + 1]) > 1e-3:
                front = k if depths[k] < depths[k + 1] else k + 1
                d0, d1 = sorted((depths[k], depths[k + 1]))
                corner = start + u * s - normal * d0 + _Z * heights[front]
                side_normal = u if front == k else -u
                self.add("side", block, street, -1, corner, -normal, _DOWN, (d1 - d0, heights[front]), side_normal)

    def add_perimeter(self) -> None:
        """The ring of buildings facing in across the outer streets, and walls closing the outer intersections."""
        nc, nr = self.conf.num_block_columns, self.conf.num_block_rows
        xs, ys, wx, wy = self.x_street, self.y_street, self.width_x, self.width_y
        x_end, y_end = xs[nc] + wy[nc], ys[nr] + wx[nr]
        for i in range(nc):  # south and north rows (in front of blocks (i, 0) and (i, nr - 1))
            xa, xb = xs[i] + wy[i], xs[i + 1]
            self.add_row(self.block_id(i, 0), self.street_id("x", 0, i), np.array([xb, 0.0, 0.0]),
                         np.array([0.0, 1.0, 0.0]), xb - xa, setbacks=False)
            self.add_row(self.block_id(i, nr - 1), self.street_id("x", nr, i), np.array([xa, y_end, 0.0]),
                         np.array([0.0, -1.0, 0.0]), xb - xa, setbacks=False)
        for j in range(nr):  # west and east rows
            ya, yb = ys[j] + wx[j], ys[j + 1]
            self.add_row(self.block_id(0, j), self.street_id("y", 0, j), np.array([0.0, ya, 0.0]),
                         np.array([1.0, 0.0, 0.0]), yb - ya, setbacks=False)
            self.add_row(self.block_id(nc - 1, j), self.street_id("y", nc, j), np.array([x_end, yb, 0.0]),
                         np.array([-1.0, 0.0, 0.0]), yb - ya, setbacks=False)
        b = self.block_id
        for i in range(nc + 1):  # across the north-south streets' ends: (first half's owner, second half's)
            self.add_end_wall(np.array([xs[i] + wy[i], 0.0]), np.array([-1.0, 0.0]), wy[i],
                              (_first(b(i, 0), b(i - 1, 0)), _first(b(i - 1, 0), b(i, 0))))
            self.add_end_wall(np.array([xs[i], y_end]), np.array([1.0, 0.0]), wy[i],
                              (_first(b(i - 1, nr - 1), b(i, nr - 1)), _first(b(i, nr - 1), b(i - 1, nr - 1))))
        for j in range(nr + 1):  # across the east-west streets' ends
            self.add_end_wall(np.array([0.0, ys[j]]), np.array([0.0, 1.0]), wx[j],
                              (_first(b(0, j - 1), b(0, j)), _first(b(0, j), b(0, j - 1))))
            self.add_end_wall(np.array([x_end, ys[j] + wx[j]]), np.array([0.0, -1.0]), wx[j],
                              (_first(b(nc - 1, j), b(nc - 1, j - 1)), _first(b(nc - 1, j - 1), b(nc - 1, j))))

    def add_end_wall(self, corner: np.ndarray, u: np.ndarray, width: float, owners: tuple[int, int]) -> None:
        """A wall closing a street at the city's edge, in two halves: each belongs to the block on its side.

        It runs from ``corner`` [2] along ``u`` [2] (seen from the street, left to right), ``width`` metres, as high
        as the highest building.
        """
        h = self.conf.facade_height_m[1]
        u3 = np.array([u[0], u[1], 0.0])
        normal = np.cross(u3, _Z)  # facing the viewer
        for k, owner in enumerate(owners):
            top = np.array([corner[0], corner[1], h]) + u3 * (k * (width / 2 + _SEAL) - _SEAL)
            self.add("end", owner, -1, self.new_landmark(), top, u3, _DOWN, (width / 2 + _SEAL, h + _SEAL), normal)

    def add_streets(self) -> None:
        """Street segments (ids in :func:`segment_blocks` order) and their ground: two halves, cut in pieces."""
        conf = self.conf
        for sid, ((axis, index, pos, blocks), split) in enumerate(zip(segment_blocks(conf), self.street_splits,
                                                                      strict=True)):
            if axis == "x":
                a, b = self.x_street[pos] + self.width_y[pos], self.x_street[pos + 1]
                c, w = self.y_street[index], self.width_x[index]
                start, end = (a, c + w / 2), (b, c + w / 2)
            else:
                a, b = self.y_street[pos] + self.width_x[pos], self.y_street[pos + 1]
                c, w = self.x_street[index], self.width_y[index]
                start, end = (c + w / 2, a), (c + w / 2, b)
            self.streets.append(Street(sid, (float(start[0]), float(start[1])), (float(end[0]), float(end[1])),
                                       float(w), blocks, split))
            self.add_street_ground(sid, axis, float(a), float(b), float(c), float(w), blocks)

    def add_street_ground(self, sid: int, axis: str, a: float, b: float, c: float, w: float,
                          blocks: tuple[int, ...]) -> None:
        """Ground of one segment from ``a`` to ``b`` along it, across from ``c`` to ``c + w``: two halves, pieces.

        The low half (south / west) belongs to the block on that side, the high half to the other (a street on
        the city's edge has one block: both halves are its). Each half reaches ``setback_m`` under the buildings.
        """
        conf = self.conf
        low, high = (blocks[0], blocks[-1])
        n = max(1, round((b - a) / conf.ground_piece_m))
        piece = (b - a) / n
        half = w / 2 + conf.setback_m
        pave = min(3.0, max(1.0, w / 2 - 3.5)) + conf.setback_m
        for k in range(n):
            s0 = a + k * piece
            for owner, lo in ((low, c - conf.setback_m), (high, c + w / 2)):
                pave_m = -pave if lo < c else pave  # pavement on the outer edge of the half (< 0: last rows)
                if axis == "x":  # u east, v south: row 0 on the north edge
                    corner, u, v = np.array([s0, lo + half, 0.0]), np.array([1.0, 0, 0]), (0.0, -1.0, 0.0)
                else:  # u north, v east: row 0 on the west edge
                    corner, u, v = np.array([lo, s0, 0.0]), np.array([0, 1.0, 0]), (1.0, 0.0, 0.0)
                    pave_m = -pave_m
                self.add("ground", owner, sid, -1, corner, u, v, (piece, half), _Z, pavement_m=pave_m)

    def add_intersections(self) -> None:
        """Ground of every intersection in four quadrants, each belonging to the block at its corner.

        At the city's edge a quadrant without a corner block belongs to the nearest block.
        """
        for j in range(self.conf.num_block_rows + 1):
            for i in range(self.conf.num_block_columns + 1):
                x0, y0, w, d = self.x_street[i], self.y_street[j], self.width_y[i], self.width_x[j]
                for di in (0, 1):
                    for dj in (0, 1):
                        a, c = i - 1 + di, j - 1 + dj  # the corner block, then its mirrors across the streets
                        owner = _first(self.block_id(a, c), self.block_id(a, 2 * j - 1 - c),
                                       self.block_id(2 * i - 1 - a, c), self.block_id(2 * i - 1 - a, 2 * j - 1 - c))
                        corner = np.array([x0 + di * w / 2, y0 + (dj + 1) * d / 2, 0.0])
                        self.add("ground", owner, -1, -1, corner, np.array([1.0, 0, 0]), (0.0, -1.0, 0.0),
                                 (w / 2, d / 2), _Z)

    def add_boards(self, block: Block) -> None:
        """``boards_per_block`` double-sided boards on the pavements around ``block``, across the street."""
        i, j = block.id % self.conf.num_block_columns, block.id // self.conf.num_block_columns
        sides = self.block_sides(i, j)
        for _ in range(self.conf.boards_per_block):
            start, normal, length, street = sides[int(self.rng.integers(4))]
            u = np.cross(_Z, normal)
            s = self.rng.uniform(min(4.0, length / 3), max(length - 4.0, 2 * length / 3))
            bw, bh = self.rng.uniform(1.0, 1.8), self.rng.uniform(1.8, 2.6)
            base = start + u * s + normal * (_BOARD_INSET + bw / 2)
            for sign in (1.0, -1.0):  # face seen looking along -u, then along +u
                corner = base + sign * (0.01 * u + normal * bw / 2) + _Z * (bh + 0.3)
                self.add("board", block.id, street, self.new_landmark(), corner, -sign * normal, _DOWN,
                         (bw, bh), sign * u)

    def add_closing_walls(self) -> None:
        """Walls across a segment of split S at each end where the street continues into a segment not of S."""
        conf = self.conf
        segs = segment_blocks(conf)
        h = conf.facade_height_m[1]
        for street in list(self.streets):
            if street.split is None:
                continue
            axis, index, pos, _ = segs[street.id]
            for step in (-1, 1):
                other = self.street_id(axis, index, pos + step)
                if other < 0 or self.streets[other].split == street.split:
                    continue
                end = np.array(street.end if step > 0 else street.start)
                along = np.subtract(street.end, street.start)
                along = along / np.linalg.norm(along) * step  # pointing out of the segment at this end
                normal = np.array([-along[0], -along[1], 0.0])  # facing back into the segment
                across = np.cross(_Z, normal)
                corner = np.array([end[0], end[1], h]) - across * (street.width_m / 2 + _SEAL)
                self.add("end", street.block_ids[0], street.id, self.new_landmark(), corner, across, _DOWN,
                         (street.width_m + 2 * _SEAL, h + _SEAL), normal)


def _widths(rng: np.random.Generator, length: float, width_m: tuple[float, float]) -> list[float]:
    """Building widths drawn in ``width_m`` that fill ``length`` exactly (the last ones share the rest)."""
    widths: list[float] = []
    rest = length
    while rest > 1e-6:
        w = float(rng.uniform(*width_m))
        if rest <= width_m[1]:
            w = rest
        elif rest - w < width_m[0]:
            w = rest / 2
        widths.append(w)
        rest -= w
    return widths


def _first(*ids: int) -> int:
    """The first id that is >= 0."""
    return next(k for k in ids if k >= 0)


def _tuple3(a: np.ndarray) -> tuple[float, float, float]:
    return float(a[0]), float(a[1]), float(a[2])
