"""Texture synthesis for the city: facades, side and closing walls, boards and ground, from real photos.

Every texture is a pure function of its :class:`TextureSpec` (a per-plane seed, a per-building style seed, the
size in texels, the season): the same spec gives the same bytes. Materials are made from ``skimage.data`` photos
(and opencv-doc's when installed, see :mod:`visloc.data.scene.texture_cache`): brick courses and stucco whose
detail is a photo crop, photo crops and mosaics of several photos (cropped, flipped, scaled, tinted), concrete
panels; facades add window grids with photo reflections, doors, shop windows and signs with random letters.
Textures are float32 RGB in [0, 1] while made, uint8 RGB ``[H, W, 3]`` when returned; row 0 is the top of a
wall (its texture ``v`` points down).
"""

from __future__ import annotations

import string
from dataclasses import dataclass

import cv2
import numpy as np

from visloc.data.scene.texture_cache import (
    COLOR_PHOTOS,
    MATERIAL_PHOTOS,
    TextureCache,
    is_gray,
    photo,
    photo_names,
)
from visloc.data.scene.world import build_mips

#: season tints of ground and boards (RGB gains)
SEASON_TINT = {"summer": (1.0, 1.0, 1.0), "autumn": (1.08, 0.92, 0.72), "winter": (0.92, 0.97, 1.08)}
SEASONS = tuple(SEASON_TINT)
_KINDS = ("facade", "side", "end", "board", "ground")
#: wall colours (RGB in [0, 1]): stone, cream, ochre, terracotta, brick, grey, white, sand, pale blue, green, pink
WALL_COLOURS = np.array([[0.62, 0.6, 0.55], [0.9, 0.85, 0.7], [0.8, 0.62, 0.3], [0.72, 0.4, 0.28],
                         [0.6, 0.28, 0.2], [0.45, 0.45, 0.47], [0.92, 0.92, 0.9], [0.82, 0.74, 0.58],
                         [0.6, 0.7, 0.78], [0.5, 0.6, 0.45], [0.85, 0.65, 0.65], [0.35, 0.3, 0.28]], np.float32)


@dataclass(frozen=True)
class TextureSpec:
    """Everything a texture is made from (hashable: it is its own cache key).

    Attributes:
        kind: ``facade``, ``side``, ``end`` (closing wall), ``board`` or ``ground``.
        seed: per-plane seed (entropy for ``numpy.random.default_rng``).
        style: per-building style seed (facades of one landmark share it), the plane's seed for others.
        size: (width, height) in texels.
        px_per_m: texels per metre (sizes of bricks, windows, slabs).
        season: ``summer``, ``autumn`` or ``winter`` (ground and boards only).
        extra_photos: include opencv-doc's photos.
        pavement_rows: ground only: rows of pavement at the top (> 0) or at the bottom (< 0); the rest is road
            with a dashed centre line on the far edge; 0: all road (intersections).
    """

    kind: str
    seed: tuple[int, ...]
    style: tuple[int, ...]
    size: tuple[int, int]
    px_per_m: float
    season: str = "summer"
    extra_photos: bool = True
    pavement_rows: int = 0

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"TextureSpec.kind: must be one of {_KINDS}, got {self.kind!r}")
        if self.season not in SEASON_TINT:
            raise ValueError(f"TextureSpec.season: must be one of {SEASONS}, got {self.season!r}")
        if min(self.size) < 1:
            raise ValueError(f"TextureSpec.size: must be positive, got {self.size}")


@dataclass(frozen=True, eq=False)
class CachedMips:
    """The plane source of a city plane: the pyramid of ``spec``, made on first use and kept in ``cache``."""

    cache: TextureCache
    spec: TextureSpec

    def __call__(self) -> tuple[np.ndarray, ...]:
        """The pyramid (from the cache, made on a miss)."""
        return self.cache.get(self.spec, lambda: build_mips(synthesize(self.spec)))


def synthesize(spec: TextureSpec) -> np.ndarray:
    """The texture of ``spec``: uint8 RGB ``[height, width, 3]``."""
    rng = np.random.default_rng(list(spec.seed))
    style = np.random.default_rng(list(spec.style))
    if spec.kind in ("facade", "end"):
        img = facade(rng, style, spec)
    elif spec.kind == "side":
        img = material(rng, style, spec.size, spec.px_per_m, spec.extra_photos)
    elif spec.kind == "board":
        img = board(rng, spec)
    else:
        img = ground(rng, spec)
    return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)


def crop(rng: np.random.Generator, img: np.ndarray, size: tuple[int, int], lo: float = 0.3) -> np.ndarray:
    """float32 RGB [h, w, 3] in [0, 1]: a random crop of ``img`` resized to ``size`` = (w, h), maybe flipped.

    The crop takes ``lo`` to 100 % of each side.
    """
    h, w = img.shape[:2]
    ch, cw = max(2, int(h * rng.uniform(lo, 1.0))), max(2, int(w * rng.uniform(lo, 1.0)))
    y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    interp = cv2.INTER_AREA if cw * ch > 4 * size[0] * size[1] else cv2.INTER_LINEAR
    out = cv2.resize(img[y0:y0 + ch, x0:x0 + cw], size, interpolation=interp)
    if rng.random() < 0.5:
        out = out[:, ::-1]
    return out.astype(np.float32) * np.float32(1 / 255)


def tinted_crop(rng: np.random.Generator, names: tuple[str, ...], size: tuple[int, int],
                lo: float = 0.3) -> np.ndarray:
    """A crop of a random photo of ``names``; grey photos get a random colour, colour photos a mild gain."""
    img = photo(names[int(rng.integers(len(names)))])
    out = crop(rng, img, size, lo)
    gain = rng.uniform(0.4, 1.0, 3) if is_gray(img) else rng.uniform(0.8, 1.15, 3)
    return out * gain.astype(np.float32)


def detail(rng: np.random.Generator, size: tuple[int, int], amount: float,
           names: tuple[str, ...] = MATERIAL_PHOTOS) -> np.ndarray:
    """float32 [h, w, 1] around 1: a crop of one of the material photos ``names``, normalised, times ``amount``."""
    g = crop(rng, photo(names[int(rng.integers(len(names)))]), size, 0.2)[..., :1]
    return 1.0 + amount * (g - float(g.mean())) / max(float(g.std()), 1e-3)


def tiled_detail(rng: np.random.Generator, size: tuple[int, int], amount: float, name: str,
                 tile: int = 96) -> np.ndarray:
    """float32 [h, w, 1] around 1: ``tile``-texel crops of photo ``name`` at full scale, tiled with random flips."""
    w, h = size
    img = photo(name)[..., 0]
    ph, pw = img.shape[:2]
    tile = min(tile, ph, pw)
    ny, nx = -(-h // tile), -(-w // tile)
    out = np.empty((ny * tile, nx * tile), np.uint8)
    for a in range(ny):
        for b in range(nx):
            y0, x0 = int(rng.integers(0, ph - tile + 1)), int(rng.integers(0, pw - tile + 1))
            patch = img[y0:y0 + tile, x0:x0 + tile]
            out[a * tile:(a + 1) * tile, b * tile:(b + 1) * tile] = patch[:: 1 - 2 * int(rng.integers(2))]
    g = out[:h, :w].astype(np.float32)[..., None]
    return 1.0 + amount * (g - float(g.mean())) / max(float(g.std()), 1e-3)


def smooth_noise(rng: np.random.Generator, size: tuple[int, int], cells: int) -> np.ndarray:
    """float32 [h, w, 1] smooth noise in about [-1, 1] with ``cells`` blobs across the larger side."""
    w, h = size
    gw, gh = max(2, cells * w // max(w, h)), max(2, cells * h // max(w, h))
    grid = rng.uniform(-1.0, 1.0, (gh, gw)).astype(np.float32)
    return cv2.resize(grid, size, interpolation=cv2.INTER_CUBIC)[..., None]


def material(rng: np.random.Generator, style: np.random.Generator, size: tuple[int, int], px_per_m: float,
             extra: bool) -> np.ndarray:
    """float32 RGB [h, w, 3] wall material: brick, stucco, photo, mosaic or panels (the style picks)."""
    kind = style.choice(["brick", "stucco", "photo", "mosaic", "panels"], p=[0.3, 0.3, 0.15, 0.1, 0.15])
    base = WALL_COLOURS[int(style.integers(len(WALL_COLOURS)))] * style.uniform(0.85, 1.12, 3).astype(np.float32)
    w, h = size
    if kind in ("brick", "panels"):
        if kind == "brick":
            bw, bh, gap = style.uniform(0.3, 0.5) * px_per_m, style.uniform(0.12, 0.2) * px_per_m, 0.03 * px_per_m
        else:
            bw, bh, gap = style.uniform(1.2, 3.0) * px_per_m, style.uniform(0.8, 1.6) * px_per_m, 0.04 * px_per_m
        bw, bh, gap = max(4, round(bw)), max(2, round(bh)), max(1, round(gap))
        yy, xx = np.mgrid[0:h, 0:w]
        row = yy // bh
        shift = (row % 2) * (bw // 2) if kind == "brick" else 0
        col = (xx + shift) // bw
        jitter = rng.uniform(0.75, 1.2, (int(row.max()) + 1, int(col.max()) + 1)).astype(np.float32)
        img = base * jitter[row, col][..., None]
        joint = ((yy % bh) < gap) | (((xx + shift) % bw) < gap)
        img[joint] = base * 0.55 + 0.25
        return img * detail(rng, size, 0.12)
    if kind == "stucco":
        return base * (1.0 + 0.12 * smooth_noise(rng, size, 6)) * detail(rng, size, 0.08)
    names = photo_names(extra)
    if kind == "photo":
        return 0.5 * tinted_crop(rng, names, size) + 0.5 * base
    nx, ny = int(style.integers(2, 5)), int(style.integers(2, 6))
    xs, ys = np.linspace(0, w, nx + 1).astype(int), np.linspace(0, h, ny + 1).astype(int)
    img = np.empty((h, w, 3), np.float32)
    for a in range(ny):
        for b in range(nx):
            cell = (max(1, xs[b + 1] - xs[b]), max(1, ys[a + 1] - ys[a]))
            img[ys[a]:ys[a + 1], xs[b]:xs[b + 1]] = tinted_crop(rng, names, cell, 0.2)
    return 0.7 * img + 0.3 * base


def _fill(img: np.ndarray, box: tuple[int, int, int, int], value: np.ndarray | float) -> None:
    """Write ``value`` into ``img[y0:y1, x0:x1]`` with ``box`` = (x0, y0, x1, y1) clipped to the image."""
    h, w = img.shape[:2]
    x0, y0, x1, y1 = max(0, box[0]), max(0, box[1]), min(w, box[2]), min(h, box[3])
    if x1 > x0 and y1 > y0:
        if isinstance(value, np.ndarray) and value.ndim == 3:  # an image over the whole box
            value = value[y0 - box[1]:y1 - box[1], x0 - box[0]:x1 - box[0]]
        img[y0:y1, x0:x1] = value


def sign(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """float32 RGB [h, w, 3]: a coloured sign with random capital letters."""
    w, h = size
    bg = rng.uniform(0.05, 1.0, 3)
    fg = np.where(bg.mean() > 0.5, rng.uniform(0.0, 0.3, 3), rng.uniform(0.7, 1.0, 3))
    img = np.empty((h, w, 3), np.uint8)
    img[:] = (bg * 255).astype(np.uint8)
    text = "".join(rng.choice(list(string.ascii_uppercase + "  "), int(rng.integers(3, 9)))).strip() or "A"
    font = int(rng.choice([cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_TRIPLEX]))
    (tw, th), _ = cv2.getTextSize(text, font, 1.0, 2)
    scale = min(0.7 * h / max(th, 1), 0.9 * w / max(tw, 1))
    thick = max(1, round(scale * 2))
    (tw, th), _ = cv2.getTextSize(text, font, scale, thick)
    org = ((w - tw) // 2, (h + th) // 2)
    cv2.putText(img, text, org, font, scale, tuple(int(c) for c in fg * 255), thick, cv2.LINE_AA)
    return img.astype(np.float32) / 255.0


def _window(rng: np.random.Generator, reflection: np.ndarray, box: tuple[int, int, int, int], frame: np.ndarray,
            px_per_m: float) -> np.ndarray:
    """float32 RGB [h, w, 3]: a framed window pane over ``box`` (x0, y0, x1, y1) of the facade's ``reflection``."""
    x0, y0, x1, y1 = box
    pane = reflection[max(0, y0):y1, max(0, x0):x1].copy()
    if rng.random() < 0.15:  # lit
        pane = 0.5 * pane + np.array([0.45, 0.4, 0.25], np.float32)
    h, w = pane.shape[:2]
    b = max(1, round(0.07 * px_per_m))
    if h > 2 * b and w > 2 * b:
        pane[:b], pane[-b:], pane[:, :b], pane[:, -b:] = frame, frame, frame, frame
        if w > 6 * b and rng.random() < 0.6:  # mullion
            pane[:, w // 2 - b // 2: w // 2 - b // 2 + b] = frame
    return pane


def facade(rng: np.random.Generator, style: np.random.Generator, spec: TextureSpec) -> np.ndarray:
    """float32 RGB [h, w, 3]: wall material, a grid of windows, a ground floor with doors, shop windows, a sign."""
    w, h = spec.size
    p = spec.px_per_m
    img = material(rng, style, spec.size, p, spec.extra_photos)
    names = photo_names(spec.extra_photos)
    frame = style.uniform(0.1, 0.95) * style.uniform(0.8, 1.1, 3).astype(np.float32)
    glass = np.array([0.05, 0.08, 0.14], np.float32)
    reflection = tinted_crop(rng, names, spec.size, 0.3) * rng.uniform(0.25, 0.6) + glass
    ground_m, floor_m = style.uniform(3.5, 4.5), style.uniform(2.8, 3.6)
    win_w, win_h = style.uniform(0.8, 1.6), style.uniform(1.2, 1.9)
    pitch = style.uniform(max(win_w + 0.6, 1.8), 3.4)
    width_m, height_m = w / p, h / p
    cols = max(1, int((width_m - 0.6) // pitch))
    x_first = (width_m - cols * pitch) / 2 + (pitch - win_w) / 2
    z = ground_m + 0.9
    while z + win_h < height_m - 0.4:
        top = round((height_m - z - win_h) * p)
        wh = max(2, round(win_h * p))
        for c in range(cols):
            x0 = round((x_first + c * pitch) * p)
            ww = max(2, round(win_w * p))
            box = (x0, top, x0 + ww, top + wh)
            _fill(img, box, _window(rng, reflection, box, frame, p))
            _fill(img, (x0 - 1, top + wh, x0 + ww + 1, top + wh + max(1, round(0.08 * p))), frame * 0.8)
        z += floor_m
    _ground_floor(rng, style, img, p, ground_m, reflection, frame)
    return img


def _ground_floor(rng: np.random.Generator, style: np.random.Generator, img: np.ndarray, p: float,
                  ground_m: float, reflection: np.ndarray, frame: np.ndarray) -> None:
    """Draw doors, shop windows and a sign into the bottom ``ground_m`` metres of ``img`` (in place)."""
    h, w = img.shape[:2]
    width_m = w / p
    shop = style.random() < 0.5
    door_w = rng.uniform(1.0, 1.5)
    door_x = rng.uniform(0.3, max(0.31, width_m - door_w - 0.3))
    door_h = min(rng.uniform(2.1, 2.6), ground_m - 0.3)
    x0, y0 = round(door_x * p), h - round(door_h * p)
    x1 = x0 + max(2, round(door_w * p))
    door = WALL_COLOURS[int(rng.integers(len(WALL_COLOURS)))] * rng.uniform(0.25, 0.6)
    _fill(img, (x0, y0, x1, h), door * detail(rng, (x1 - x0, h - y0), 0.1))
    if shop:
        shop_h = min(2.4, ground_m - 1.1)
        ys = h - round((shop_h + 0.4) * p)
        for a, b in ((0.3, door_x - 0.3), (door_x + door_w + 0.3, width_m - 0.3)):
            if b - a > 1.0:
                box = (round(a * p), ys, round(b * p), ys + round(shop_h * p))
                _fill(img, box, _window(rng, reflection * 1.4, box, frame, p))
    if rng.random() < 0.65:
        sw = rng.uniform(0.4, 0.9) * width_m
        sh = rng.uniform(0.5, 0.9)
        sx = rng.uniform(0.0, width_m - sw)
        sy = h - round((ground_m - 0.1) * p)
        board = sign(rng, (max(4, round(sw * p)), max(4, round(sh * p))))
        _fill(img, (round(sx * p), sy, round(sx * p) + board.shape[1], sy + board.shape[0]), board)


def board(rng: np.random.Generator, spec: TextureSpec) -> np.ndarray:
    """float32 RGB [h, w, 3]: a framed poster (a photo crop, a sign band); its photo and tint follow the season."""
    w, h = spec.size
    season_rng = np.random.default_rng([*spec.seed, SEASONS.index(spec.season)])
    names = COLOR_PHOTOS + photo_names(spec.extra_photos)[len(COLOR_PHOTOS):]
    img = tinted_crop(season_rng, names, spec.size, 0.25)
    band = max(2, h // 5)
    img[h - band:] = sign(season_rng, (w, band))
    b = max(1, round(0.05 * spec.px_per_m))
    frame = rng.uniform(0.05, 0.6, 3).astype(np.float32)
    img[:b], img[-b:], img[:, :b], img[:, -b:] = frame, frame, frame, frame
    img = img * np.array(SEASON_TINT[spec.season], np.float32)
    if spec.season == "winter":
        cap = max(1, round(0.06 * spec.px_per_m))
        img[:cap] = 0.93
    return img


def ground(rng: np.random.Generator, spec: TextureSpec) -> np.ndarray:
    """float32 RGB [h, w, 3]: asphalt with a dashed centre line, paving slabs on the pavement; season cover."""
    w, h = spec.size
    p = spec.px_per_m
    asphalt = rng.uniform(0.22, 0.42) * np.array([1.0, 1.0, 1.02], np.float32)
    img = asphalt * tiled_detail(rng, spec.size, 0.2, "gravel") * (1.0 + 0.1 * smooth_noise(rng, spec.size, 8))
    img = np.broadcast_to(img, (h, w, 3)).copy()
    rows = abs(spec.pavement_rows)
    if rows > 0:
        pave = (slice(0, rows) if spec.pavement_rows > 0 else slice(h - rows, h))
        slab = max(3, round(rng.uniform(0.4, 1.0) * p))
        yy, xx = np.mgrid[0:rows, 0:w]
        jitter = rng.uniform(0.85, 1.1, (rows // slab + 1, w // slab + 1)).astype(np.float32)
        tone = rng.uniform(0.45, 0.75) * rng.uniform(0.9, 1.1, 3).astype(np.float32)
        paving = tone * jitter[yy // slab, xx // slab][..., None] * detail(rng, (w, rows), 0.1)
        paving[((yy % slab) == 0) | ((xx % slab) == 0)] *= 0.7
        img[pave] = paving
        curb = max(1, round(0.15 * p))
        img[(slice(rows, rows + curb) if spec.pavement_rows > 0 else slice(h - rows - curb, h - rows))] = 0.68
        line_row = h - max(1, round(0.12 * p)) if spec.pavement_rows > 0 else 0
        line = slice(line_row, line_row + max(1, round(0.12 * p)))
        dash, period = round(1.5 * p), round(4.0 * p)
        phase = int(rng.integers(period))
        on = ((np.arange(w) + phase) % period) < dash
        img[line, on] = 0.85
    return _season_cover(rng, img, spec)


def _season_cover(rng: np.random.Generator, img: np.ndarray, spec: TextureSpec) -> np.ndarray:
    """Tint the ground for the season; autumn adds fallen leaves, winter snow (patchy, thinner where driven)."""
    h, w = img.shape[:2]
    img = img * np.array(SEASON_TINT[spec.season], np.float32)
    if spec.season == "autumn":
        n = int(w * h / max(spec.px_per_m, 1.0) ** 2 * 3)
        xs, ys = rng.integers(0, w, n), rng.integers(0, h, n)
        colours = rng.uniform([0.5, 0.15, 0.0], [0.95, 0.55, 0.1], (n, 3)).astype(np.float32)
        r = max(1, round(0.06 * spec.px_per_m))
        for dy in range(-r, r + 1):
            for dx in range(-r, r + 1):
                img[np.clip(ys + dy, 0, h - 1), np.clip(xs + dx, 0, w - 1)] = colours
    elif spec.season == "winter":
        cover = np.clip(0.7 + 0.35 * smooth_noise(rng, (w, h), 10), 0.3, 0.95)
        snow = np.array([0.9, 0.92, 0.96], np.float32) * detail(rng, (w, h), 0.04)
        img = img * (1 - cover) + snow * cover
    return img
