"""A small street world of textured rectangles whose textures are real photos from ``skimage.data``.

World frame (metres): x along the street, y to the left when looking down +x, z up; the ground is z = 0.
Two rows of building facades face each other across the street (random widths, heights and setbacks,
side walls where setbacks differ), walls close both ends, the ground is split into segments with different
textures, and a few double-sided boards stand on the pavements. Each facade gets its own photo crop, flip
and colour gain, so different street segments look different (retrieval) and are well textured (matching).

Texture convention: texel ``(s, t)`` (column, row; centre of the top-left texel at ``(0, 0)``) lies at the
world point ``origin + (s + 0.5) * su * u + (t + 0.5) * sv * v`` with ``su = width_m / texture_width`` and
``sv = height_m / texture_height``; the texture covers ``s, t`` in ``[-0.5, size - 0.5]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from visloc.data.scene.config import SceneConf

#: colour photos used for facades
COLOR_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "retina",
                "colorwheel", "motorcycle_left")
#: greyscale photos, tinted with a random colour, for facades
GRAY_PHOTOS = ("camera", "coins", "moon", "page", "text", "clock", "cell", "brick")
#: greyscale ground textures, tinted
GROUND_PHOTOS = ("gravel", "brick", "grass")
#: the smallest mip level side in texels
_MIN_MIP = 8


class MipSource(Protocol):
    """Gives a plane's texture pyramid (uint8 RGBA levels, level 0 first) when called."""

    def __call__(self) -> tuple[np.ndarray, ...]:
        """The pyramid."""
        ...


@dataclass(frozen=True, eq=False)
class FixedMips:
    """A texture pyramid held in memory (the old street's planes, tests)."""

    levels: tuple[np.ndarray, ...]

    def __call__(self) -> tuple[np.ndarray, ...]:
        """The pyramid."""
        return self.levels


@dataclass(frozen=True, eq=False)
class Plane:
    """A textured rectangle.

    Attributes:
        name: a readable identifier (``facade_L03``, ``ground_2``...).
        origin: [3] world position of the texture's outer top-left corner (metres).
        u: [3] unit world direction of increasing texture column ``s``.
        v: [3] unit world direction of increasing texture row ``t`` (orthogonal to ``u``).
        size_m: (width, height) of the rectangle along ``u`` and ``v`` in metres.
        texture_size: (width, height) of the level-0 texture in texels (known without making the texture).
        source: gives the texture pyramid (:attr:`mips`); the city's sources make it lazily and cache it.
        place_id: id of the place the plane belongs to (``World.places`` / ``City.places``), -1 for none.
    """

    name: str
    origin: np.ndarray
    u: np.ndarray
    v: np.ndarray
    size_m: tuple[float, float]
    texture_size: tuple[int, int]
    source: MipSource
    place_id: int = -1

    @property
    def mips(self) -> tuple[np.ndarray, ...]:
        """Texture pyramid, level 0 first: uint8 RGBA ``[h_l, w_l, 4]``, each level about half the previous.

        Alpha is 255, so that a warp with a zero border tells inside from outside. City planes make it on first use.
        """
        return self.source()

    @property
    def texture(self) -> np.ndarray:
        """Level-0 texture, uint8 RGB ``[H, W, 3]`` (a copy)."""
        return np.ascontiguousarray(self.mips[0][..., :3])

    @property
    def normal(self) -> np.ndarray:
        """[3] unit normal ``u x v``."""
        return np.cross(self.u, self.v)

    @property
    def texel_to_world(self) -> np.ndarray:
        """[3, 3] ``A`` with ``X_world = A @ (s, t, 1)`` for level-0 texel coordinates ``(s, t)``."""
        w, h = self.texture_size
        su, sv = self.size_m[0] / w, self.size_m[1] / h
        return np.stack([su * self.u, sv * self.v, self.origin + 0.5 * su * self.u + 0.5 * sv * self.v], axis=1)

    def world_to_texel(self, points: np.ndarray) -> np.ndarray:
        """Level-0 texel coordinates ``[N, 2]`` of world points ``[N, 3]`` lying on the plane."""
        w, h = self.texture_size
        d = np.asarray(points, dtype=np.float64) - self.origin
        s = d @ self.u * (w / self.size_m[0]) - 0.5
        t = d @ self.v * (h / self.size_m[1]) - 0.5
        return np.stack([s, t], axis=1)


@dataclass(frozen=True, eq=False)
class World:
    """The planes of the scene and the conf that built them."""

    conf: SceneConf
    planes: tuple[Plane, ...]


def build_mips(texture: np.ndarray) -> tuple[np.ndarray, ...]:
    """Texture pyramid of uint8 RGB ``[H, W, 3]``: RGBA levels (alpha 255), halved down to about ``_MIN_MIP``."""
    mips: list[np.ndarray] = [np.concatenate([texture, np.full(texture.shape[:2] + (1,), 255, np.uint8)], axis=2)]
    while min(mips[-1].shape[:2]) >= 2 * _MIN_MIP:
        h, w = mips[-1].shape[:2]
        mips.append(cv2.resize(mips[-1], (w // 2, h // 2), interpolation=cv2.INTER_AREA))
    return tuple(mips)


def plane_frame(name: str, origin: object, u: object, v: object,
                size_m: tuple[float, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Checked ``(origin, u, v)`` float64 [3] each, ``u`` and ``v`` normalised; raises ValueError when invalid."""
    u_arr = np.asarray(u, dtype=np.float64)
    v_arr = np.asarray(v, dtype=np.float64)
    u_arr, v_arr = u_arr / np.linalg.norm(u_arr), v_arr / np.linalg.norm(v_arr)
    if abs(float(u_arr @ v_arr)) > 1e-9:
        raise ValueError(f"make_plane({name!r}): u and v must be orthogonal")
    if min(size_m) <= 0:
        raise ValueError(f"make_plane({name!r}): size_m must be positive, got {size_m}")
    return np.asarray(origin, dtype=np.float64), u_arr, v_arr


def make_plane(name: str, origin: object, u: object, v: object, size_m: tuple[float, float],
               texture: np.ndarray, place_id: int = -1) -> Plane:
    """Build a plane and its texture pyramid (held in memory).

    Args:
        name: identifier.
        origin: [3] world position of the outer top-left corner of the texture.
        u: [3] direction of texture columns (normalised here).
        v: [3] direction of texture rows (normalised here; must be orthogonal to ``u``).
        size_m: (width, height) in metres, both > 0.
        texture: uint8 RGB ``[H, W, 3]``.
        place_id: the place the plane belongs to, -1 for none.
    """
    o, u_arr, v_arr = plane_frame(name, origin, u, v, size_m)
    if texture.dtype != np.uint8 or texture.ndim != 3 or texture.shape[2] != 3:
        raise ValueError(f"make_plane({name!r}): texture must be uint8 [H, W, 3], got {texture.dtype} "
                         f"{texture.shape}")
    return Plane(name, o, u_arr, v_arr, (float(size_m[0]), float(size_m[1])),
                 (int(texture.shape[1]), int(texture.shape[0])), FixedMips(build_mips(texture)), place_id)


def load_photo(name: str) -> np.ndarray:
    """A ``skimage.data`` photo as uint8 ``[H, W, 3]`` (greyscale repeated); ``motorcycle_left/right`` too."""
    import skimage.data

    if name in ("motorcycle_left", "motorcycle_right"):
        left, right, _ = skimage.data.stereo_motorcycle()
        img = left if name == "motorcycle_left" else right
    else:
        img = getattr(skimage.data, name)()
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return np.ascontiguousarray(img[..., :3]).astype(np.uint8)


def photo_texture(rng: np.random.Generator, photo: np.ndarray, size: tuple[int, int], tint: bool) -> np.ndarray:
    """A random crop (60-100 % of each side) of ``photo``, flipped at random, colour-scaled, resized to ``size``.

    Args:
        rng: random generator.
        photo: uint8 ``[H, W, 3]``.
        size: (width, height) of the texture in texels.
        tint: multiply by a random saturated colour (for greyscale photos) instead of a mild gain.
    """
    h, w = photo.shape[:2]
    ch, cw = int(h * rng.uniform(0.6, 1.0)), int(w * rng.uniform(0.6, 1.0))
    y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    crop = photo[y0:y0 + ch, x0:x0 + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    gain = rng.uniform(0.45, 1.0, 3) if tint else rng.uniform(0.85, 1.15, 3)
    out = cv2.resize(np.ascontiguousarray(crop), size, interpolation=cv2.INTER_AREA).astype(np.float32) * gain
    return np.clip(out, 0, 255).astype(np.uint8)


def tiled_texture(rng: np.random.Generator, photo: np.ndarray, size: tuple[int, int], tile: int) -> np.ndarray:
    """Fill ``size`` (width, height) with ``tile``-texel crops of ``photo``, each with its own offset and flip."""
    w, h = size
    out = np.empty((h, w, 3), np.uint8)
    gain = rng.uniform(0.5, 1.0, 3)
    for y in range(0, h, tile):
        for x in range(0, w, tile):
            ph, pw = photo.shape[:2]
            y0, x0 = int(rng.integers(0, ph - tile + 1)), int(rng.integers(0, pw - tile + 1))
            patch = photo[y0:y0 + tile, x0:x0 + tile]
            if rng.random() < 0.5:
                patch = patch[::-1]
            out[y:y + tile, x:x + tile] = patch[:min(tile, h - y), :min(tile, w - x)]
    return np.clip(out.astype(np.float32) * gain, 0, 255).astype(np.uint8)


def _texture_size(conf: SceneConf, width_m: float, height_m: float) -> tuple[int, int]:
    return max(_MIN_MIP, round(width_m * conf.px_per_m)), max(_MIN_MIP, round(height_m * conf.px_per_m))


def _facade_row(conf: SceneConf, rng: np.random.Generator, side: int, photos: dict[str, np.ndarray],
                order: list[str]) -> list[Plane]:
    """Facades (and side walls between different setbacks) along one side; ``side`` = +1 left, -1 right."""
    planes: list[Plane] = []
    x, k = -5.0, 0
    line = conf.street_width_m / 2
    prev: tuple[float, float] | None = None  # (setback y, height) of the previous building
    while x < conf.street_length_m + 5.0:
        (w_lo, w_hi), (h_lo, h_hi) = conf.building_width_m, conf.building_height_m  # (min, max), checked
        bw = min(rng.uniform(w_lo, w_hi), conf.street_length_m + 5.0 - x)
        bh = rng.uniform(h_lo, h_hi)
        y = side * (line + rng.uniform(0.0, conf.setback_m))
        name = order[(k + (0 if side > 0 else len(order) // 2)) % len(order)]
        tex = photo_texture(rng, photos[name], _texture_size(conf, bw, bh), tint=name in GRAY_PHOTOS)
        # facing the street: columns run along +x on the left side, along -x on the right side
        x0 = x if side > 0 else x + bw
        planes.append(make_plane(f"facade_{'L' if side > 0 else 'R'}{k:02d}", (x0, y, bh), (side, 0, 0),
                                 (0, 0, -1), (bw, bh), tex))
        if prev is not None and abs(prev[0] - y) > 1e-3:
            wh = min(prev[1], bh)
            depth = abs(prev[0] - y)
            wall = photo_texture(rng, photos["brick"], _texture_size(conf, depth, wh), tint=True)
            y_near = min(abs(prev[0]), abs(y)) * side
            planes.append(make_plane(f"side_{'L' if side > 0 else 'R'}{k:02d}", (x, y_near, wh), (0, side, 0),
                                     (0, 0, -1), (depth, wh), wall))
        prev = (y, bh)
        x += bw
        k += 1
    return planes


def _ground(conf: SceneConf, rng: np.random.Generator, photos: dict[str, np.ndarray]) -> list[Plane]:
    """Ground segments of about 8 m, covering the street and the setbacks, each with its own texture."""
    half = conf.street_width_m / 2 + conf.setback_m + 0.5
    x0, x1 = -5.0, conf.street_length_m + 5.0
    n = max(1, round((x1 - x0) / 8.0))
    seg = (x1 - x0) / n
    planes = []
    for i in range(n):
        name = GROUND_PHOTOS[int(rng.integers(len(GROUND_PHOTOS)))]
        tex = tiled_texture(rng, photos[name], _texture_size(conf, seg, 2 * half), tile=128)
        planes.append(make_plane(f"ground_{i}", (x0 + i * seg, half, 0.0), (1, 0, 0), (0, -1, 0),
                                 (seg, 2 * half), tex))
    return planes


def _ends_and_boards(conf: SceneConf, rng: np.random.Generator, photos: dict[str, np.ndarray]) -> list[Plane]:
    """Walls closing both ends of the street and double-sided boards on the pavements."""
    half = conf.street_width_m / 2 + conf.setback_m
    planes = []
    for i, (x, sign) in enumerate(((-5.0, 1), (conf.street_length_m + 5.0, -1))):
        h = conf.building_height_m[1]
        name = COLOR_PHOTOS[int(rng.integers(len(COLOR_PHOTOS)))]
        tex = photo_texture(rng, photos[name], _texture_size(conf, 2 * half, h), tint=False)
        # seen from the street: columns run along +y at the near end (looking -x), -y at the far end
        planes.append(make_plane(f"end_{i}", (x, -sign * half, h), (0, sign, 0), (0, 0, -1), (2 * half, h), tex))
    for i in range(conf.num_boards):
        x = (i + 0.5) * conf.street_length_m / max(conf.num_boards, 1)
        y = (1 if i % 2 == 0 else -1) * (conf.street_width_m / 2 - 1.0)
        bw, bh = rng.uniform(1.0, 1.8), rng.uniform(1.8, 2.6)
        # across the street; face 0 is seen looking +x (columns along -y), face 1 looking -x
        for face, sign in ((0, 1), (1, -1)):
            name = COLOR_PHOTOS[int(rng.integers(len(COLOR_PHOTOS)))]
            tex = photo_texture(rng, photos[name], _texture_size(conf, bw, bh), tint=False)
            origin = (x - sign * 0.01, y + sign * bw / 2, bh + 0.3)
            planes.append(make_plane(f"board_{i}_{face}", origin, (0, -sign, 0), (0, 0, -1), (bw, bh), tex))
    return planes


def build_world(conf: SceneConf) -> World:
    """Build the street world of ``conf``; the same conf (seed included) gives the same world.

    Args:
        conf: scene configuration.

    Returns:
        The world: facades, side walls, ground segments, end walls and boards.
    """
    rng = np.random.default_rng([conf.seed, 1])
    names = set(COLOR_PHOTOS) | set(GRAY_PHOTOS) | set(GROUND_PHOTOS)
    photos = {name: load_photo(name) for name in sorted(names)}
    order: list[str] = list(COLOR_PHOTOS + GRAY_PHOTOS)
    rng.shuffle(order)
    planes = _ground(conf, rng, photos)
    planes += _facade_row(conf, rng, 1, photos, order)
    planes += _facade_row(conf, rng, -1, photos, order)
    planes += _ends_and_boards(conf, rng, photos)
    return World(conf, tuple(planes))
