"""The photo library of the city's textures and the bounded, lazily filled texture cache.

Photos: the ``skimage.data`` photos that ship with scikit-image (always there), plus the photos of Debian's
``opencv-doc`` (``/usr/share/doc/opencv-doc/examples/data/*.jpg|png``) when installed and asked for. Each photo is
read once per process on first use.

Cache: texture pyramids are made on first use and kept in a least-recently-used cache bounded in bytes, so a
city of thousands of planes never holds all of its textures.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from visloc.data.scene.world import load_photo

log = logging.getLogger(__name__)

#: colour photos of skimage.data
COLOR_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "retina",
                "colorwheel", "motorcycle_left", "motorcycle_right")
#: greyscale photos of skimage.data (tinted where used)
GRAY_PHOTOS = ("camera", "coins", "moon", "page", "text", "clock", "cell", "brick", "gravel", "grass", "horse",
               "microaneurysms")
#: greyscale photos that look like a material (stone, gravel, grass, stucco)
MATERIAL_PHOTOS = ("brick", "gravel", "grass", "moon", "cell", "coins")
#: where Debian's opencv-doc keeps its sample photos
OPENCV_DOC = Path("/usr/share/doc/opencv-doc/examples/data")
#: photos larger than this (either side) are shrunk once when read
_MAX_SIDE = 1024


@functools.lru_cache(maxsize=1)
def opencv_photo_names() -> tuple[str, ...]:
    """Names (``cv:<file>``) of the opencv-doc photos installed here, sorted; empty when opencv-doc is absent."""
    if not OPENCV_DOC.is_dir():
        return ()
    return tuple(f"cv:{p.name}" for p in sorted(OPENCV_DOC.iterdir()) if p.suffix.lower() in (".jpg", ".png"))


def photo_names(extra: bool) -> tuple[str, ...]:
    """Photos for facades and boards: skimage.data colour and grey photos, and opencv-doc's when ``extra``."""
    return COLOR_PHOTOS + GRAY_PHOTOS + (opencv_photo_names() if extra else ())


@functools.cache
def photo(name: str) -> np.ndarray:
    """uint8 RGB ``[H, W, 3]`` of a library photo (``skimage.data`` name or ``cv:<file>``), read once, read-only.

    Photos larger than 1024 pixels are shrunk to 1024 on their longer side.
    """
    if name.startswith("cv:"):
        bgr = cv2.imread(str(OPENCV_DOC / name[3:]), cv2.IMREAD_COLOR)
        if bgr is None:
            raise FileNotFoundError(f"photo: cannot read {OPENCV_DOC / name[3:]}")
        img = np.ascontiguousarray(bgr[..., ::-1])
    else:
        img = load_photo(name)
    scale = _MAX_SIDE / max(img.shape[:2])
    if scale < 1:  # textures are at most a few hundred texels wide: smaller photos crop and resize faster
        img = cv2.resize(img, (round(img.shape[1] * scale), round(img.shape[0] * scale)), interpolation=cv2.INTER_AREA)
    img.setflags(write=False)
    return img


def is_gray(img: np.ndarray) -> bool:
    """True when the three channels of a photo are (almost) equal."""
    sample = img[::16, ::16].astype(np.int16)
    return int(np.abs(sample[..., 0] - sample[..., 1]).max()) <= 3 and int(np.abs(sample[..., 1] -
                                                                                     sample[..., 2]).max()) <= 3


class TextureCache:
    """Least-recently-used cache of texture pyramids, bounded in bytes; safe to share between threads.

    Args:
        max_bytes: the most bytes of pyramids held at once (one pyramid larger than that is made, returned and
            not kept).
    """

    def __init__(self, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError(f"TextureCache: max_bytes must be > 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[object, tuple[tuple[np.ndarray, ...], int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def bytes(self) -> int:
        """Bytes of the pyramids held now."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: object, make: Callable[[], tuple[np.ndarray, ...]]) -> tuple[np.ndarray, ...]:
        """The pyramid of ``key``, made by ``make()`` on a miss (outside the lock) and then kept."""
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
                self.hits += 1
                return item[0]
            self.misses += 1
        mips = make()
        for level in mips:
            level.setflags(write=False)
        size = sum(level.nbytes for level in mips)
        with self._lock:
            if key not in self._items and size <= self.max_bytes:
                self._items[key] = (mips, size)
                self._bytes += size
                while self._bytes > self.max_bytes:
                    _, (_, dropped) = self._items.popitem(last=False)
                    self._bytes -= dropped
        return mips

    def clear(self) -> None:
        """Drop every pyramid."""
        with self._lock:
            self._items.clear()
            self._bytes = 0

    def __getstate__(self) -> dict[str, object]:
        """Pickled empty (textures are remade where the city is unpickled)."""
        return {"max_bytes": self.max_bytes}

    def __setstate__(self, state: dict[str, object]) -> None:
        max_bytes = state["max_bytes"]
        if not isinstance(max_bytes, int):
            raise TypeError(f"TextureCache: bad pickled state {state!r}")
        self.__init__(max_bytes)
