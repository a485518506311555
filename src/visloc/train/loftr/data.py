"""Training pairs of the Coarse LoFTR recipe: the world's ``pairs`` folders with cached coarse ground truth.

An item is one pair of a ``pairs`` dataset (:mod:`visloc.data.world.pairs_files`; ``WorldPairs(conf, split)``
reads ``conf.root`` with ``{split}`` replaced by the split name): both images in gray, resized to the training
size (``cv2.INTER_AREA``), their intrinsics for that size, the relative pose and the coarse ground truth of
:func:`~visloc.train.loftr.supervision.coarse_gt` at the conf's resolution.

Resizing by ``scale = original / resized`` per axis maps a resized pixel ``p`` to ``(p + 0.5) * scale - 0.5``
(pixel-centre-at-0), so the resized intrinsics are ``fx / sx``, ``fy / sy``, ``(cx + 0.5) / sx - 0.5``,
``(cy + 0.5) / sy - 0.5``: a 3D point projects with them exactly where its native projection lands after
the resize. The ground truth warps on the native depth (exact) and only then converts to resized cells.

Warping costs about 0.14 s per pair at 640x480 and resolution 16 on this CPU (0.19 s with reading the depth),
so the ground truth is computed once and cached on disk: ``<cache_dir>/<key>/<image0 stem>__<image1 stem>.npz``
(atomic writes), the key holding the size, the resolution and the tolerances. :func:`prepare_gt` fills the cache
ahead of training; a file that does not load or does not fit is recomputed with a warning. The cache does not
notice a regenerated dataset: delete it then.

Photometric augmentation (brightness, contrast, gamma, Gaussian noise; never geometric, the ground truth
depends on the geometry) applies to the ``train`` split only, each image drawn independently from a
generator seeded by ``(seed, epoch, index)``: call :meth:`WorldPairs.set_epoch` each epoch (as for
``DistributedSampler``; with ``persistent_workers`` the workers keep the epoch they were started with).
A missing or unreadable file raises one error naming it: the training data must be whole.
"""

from __future__ import annotations

import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from visloc.conf import ConfError
from visloc.data.scene.flow import REL_TOL
from visloc.data.world.base import progress as progress_bar
from visloc.data.world.pairs_files import PairInfo, depth_name, read_depth, read_info
from visloc.data.world.pairs_gt import CYCLE_PX, View
from visloc.errors import InputError
from visloc.io.atomic import atomic_path
from visloc.io.images import read_image
from visloc.io.poses import Camera, CameraPose, read_cameras, read_poses
from visloc.train.datasets.augment import additive_gaussian_noise, random_brightness, random_contrast
from visloc.train.loftr.supervision import coarse_gt
from visloc.utils.image_ops import rgb_to_gray

logger = logging.getLogger(__name__)

#: the splits; photometric augmentation applies to ``train`` only
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class WorldPairsConf:
    """A ``pairs`` dataset as training data.

    Attributes:
        root: the ``pairs`` folder; ``{split}`` in it is replaced by the split name (``data/pairs_{split}``).
        size: ``(W, H)`` of the training images, multiples of ``resolution``; None: the native size (which
            must then be a multiple).
        resolution: coarse cell size in pixels of the training images.
        augment: photometric augmentation of the ``train`` split.
        photometric: its strength in ``[0, 2]`` (1: gamma x/÷ e^0.4, contrast x0.7 to x1.3, brightness
            +-0.15, noise sigma up to 0.03); 0 turns it off.
        seed: seed of the augmentation.
        cache_dir: folder of the ground-truth cache; None: ``<root>/.loftr_gt``.
        rel_tol: relative depth tolerance of the occlusion check.
        min_overlap: pairs of smaller ``overlap`` (``pairs_info.csv``) are left out.
        crop: ``(W, H)`` windows cut from the (resized) ``train`` images, on the cell grid (None: whole images).
            Image 0's window is drawn at random; image 1's is centred on where image 0's window lands (the
            median target cell of its matches) with a jitter of up to a quarter window, so that most of the
            window's matches stay in it. The ground truth is the full grid's, re-indexed: no new warping, and
            the cells keep their training scale (cheaper steps at the evaluation's pixel scale).
    """

    root: str = ""
    size: tuple[int, ...] | None = None
    resolution: int = 16
    augment: bool = True
    photometric: float = 1.0
    seed: int = 0
    cache_dir: str | None = None
    rel_tol: float = REL_TOL
    min_overlap: float = 0.0
    crop: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.resolution < 1:
            raise ConfError(f"data.resolution: expected >= 1 pixel, got {self.resolution}")
        if self.size is not None:
            if len(self.size) != 2 or min(self.size) < self.resolution:
                raise ConfError(f"data.size: expected (W, H) of at least one cell each, got {self.size}")
            if self.size[0] % self.resolution or self.size[1] % self.resolution:
                raise ConfError(f"data.size: {self.size} is not a multiple of the resolution {self.resolution}")
        if not 0.0 <= self.photometric <= 2.0:
            raise ConfError(f"data.photometric: expected a strength in [0, 2], got {self.photometric}")
        if not self.rel_tol > 0:
            raise ConfError(f"data.rel_tol: expected > 0, got {self.rel_tol}")
        if self.crop is not None and (len(self.crop) != 2 or min(self.crop) < self.resolution
                                      or self.crop[0] % self.resolution or self.crop[1] % self.resolution):
            raise ConfError(f"data.crop: expected (W, H), multiples of the resolution {self.resolution}, got "
                            f"{self.crop}")
        if not 0.0 <= self.min_overlap < 1.0:
            raise ConfError(f"data.min_overlap: expected in [0, 1), got {self.min_overlap}")

    def folder(self, split: str) -> Path:
        """The ``pairs`` folder of ``split``."""
        if split not in SPLITS:
            raise ValueError(f"WorldPairs: split must be one of {', '.join(SPLITS)}, got {split!r}")
        return Path(self.root.replace("{split}", split))


class PairItem(TypedDict):
    """One pair (see the module docstring); ``L = (H // r) * (W // r)`` cells, row-major."""

    image0: torch.Tensor  # [1, H, W] float32 gray in [0, 1]
    image1: torch.Tensor  # [1, H, W]
    matches0: torch.Tensor  # [L] int64, -1: no match
    K0: torch.Tensor  # [3, 3] float32, intrinsics of the resized image 0 (pixel centre at 0)
    K1: torch.Tensor  # [3, 3] float32
    T_0to1: torch.Tensor  # [4, 4] float32, cam1_from_cam0
    overlap: float
    level: int
    name: str  # name0


def resized_K(K: np.ndarray, scale: tuple[float, float]) -> np.ndarray:
    """``[3, 3]`` intrinsics of an image resized by ``scale = (sx, sy) = original / resized`` (pixel centre at 0)."""
    sx, sy = scale
    K = np.asarray(K, np.float64)
    return np.array([[K[0, 0] / sx, K[0, 1] / sx, (K[0, 2] + 0.5) / sx - 0.5],
                     [0.0, K[1, 1] / sy, (K[1, 2] + 0.5) / sy - 0.5], [0.0, 0.0, 1.0]])


def relative_pose(pose0: CameraPose, pose1: CameraPose) -> np.ndarray:
    """``[4, 4]`` ``cam1_from_cam0`` of two ``cam_from_world`` poses."""
    rel = pose1 * pose0.inverse()
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = rel.R, rel.t
    return T


def augment_photometric(rng: np.random.Generator, image: np.ndarray, strength: float) -> np.ndarray:
    """Gamma, contrast, brightness and Gaussian noise of ``strength`` on a gray ``[H, W]`` float image in [0, 1]."""
    out = np.clip(image.astype(np.float32), 0.0, 1.0) ** np.float32(np.exp(rng.uniform(-0.4, 0.4) * strength))
    out = random_contrast(rng, out, (1.0 - 0.3 * strength, 1.0 + 0.3 * strength))
    out = random_brightness(rng, out, 0.15 * strength)
    out = additive_gaussian_noise(rng, out, 0.03 * strength)
    return np.ascontiguousarray(out, dtype=np.float32)


def gt_key(conf: WorldPairsConf) -> str:
    """The cache sub-folder of the settings that change the ground truth."""
    size = "native" if conf.size is None else f"{conf.size[0]}x{conf.size[1]}"
    return f"{size}_r{conf.resolution}_tol{conf.rel_tol:g}_cyc{CYCLE_PX:g}"


def _load_cached(path: Path, L: int, S: int) -> np.ndarray | None:
    """``matches0`` of a cache file, or None when it is missing or does not load or fit (warned)."""
    if not path.is_file():
        return None
    try:
        with np.load(path) as f:
            m = np.asarray(f["matches0"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        logger.warning("%s: corrupt ground-truth cache file (%s); recomputing", path, str(e).splitlines()[0][:80])
        return None
    if m.shape != (L,) or m.dtype != np.int64 or (L and (m.min() < -1 or m.max() >= S)):
        logger.warning("%s: ground-truth cache file does not fit the pair (%s %s); recomputing", path, m.shape,
                       m.dtype)
        return None
    return m


class WorldPairs(Dataset[PairItem]):
    """The pairs of ``conf.folder(split)`` (module docstring).

    Raises:
        InputError: the folder or one of its text files is missing or unreadable, or a native size is not a
            multiple of the resolution.
    """

    def __init__(self, conf: WorldPairsConf, split: str = "train") -> None:
        self.conf, self.split = conf, split
        self.root = conf.folder(split)
        if not self.root.is_dir():
            raise InputError(f"{self.root}: pairs folder not found")
        self.rows: list[PairInfo] = [r for r in read_info(self.root / "pairs_info.csv")
                                     if r.overlap >= conf.min_overlap]
        self.cameras: dict[str, Camera] = read_cameras(self.root / "cameras.txt")
        self.poses: dict[str, CameraPose] = read_poses(self.root / "poses.txt")
        for r in self.rows:
            for name in (r.name0, r.name1):
                if name not in self.cameras or name not in self.poses:
                    raise InputError(f"{self.root}: no camera or pose for image {name!r}")
                self.size_of(name)
        self.augment = conf.augment and split == "train" and conf.photometric > 0
        self.cache_dir = (Path(conf.cache_dir) if conf.cache_dir else self.root / ".loftr_gt") / gt_key(conf)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.rows)

    def set_epoch(self, epoch: int) -> None:
        """Draw the augmentation of ``epoch`` from now on."""
        self.epoch = int(epoch)

    def size_of(self, name: str) -> tuple[int, int]:
        """``(W, H)`` of image ``name`` once resized."""
        cam, r = self.cameras[name], self.conf.resolution
        if self.conf.size is not None:
            return int(self.conf.size[0]), int(self.conf.size[1])
        if cam.width % r or cam.height % r:
            raise InputError(f"{self.root}: image {name} is {cam.width}x{cam.height}, not a multiple of the "
                             f"resolution {r}; set data.size")
        return cam.width, cam.height

    def _scale(self, name: str) -> tuple[float, float]:
        W, H = self.size_of(name)
        cam = self.cameras[name]
        return cam.width / W, cam.height / H

    def _grid(self, name: str) -> tuple[int, int]:
        W, H = self.size_of(name)
        return H // self.conf.resolution, W // self.conf.resolution

    def _view(self, name: str) -> View:
        path = self.root / depth_name(name)
        try:
            depth, labels = read_depth(path), read_depth(path, "plane")
        except (OSError, KeyError) as e:
            raise InputError(f"{path}: unreadable depth file ({str(e).splitlines()[0][:80]})") from None
        cam = self.cameras[name]
        if depth.shape != (cam.height, cam.width):
            raise InputError(f"{path}: depth is {depth.shape[1]}x{depth.shape[0]}, the camera "
                             f"{cam.width}x{cam.height}")
        return View(depth, cam.K_opencv, self.poses[name], labels)

    def cache_path(self, index: int) -> Path:
        """The cache file of pair ``index``."""
        r = self.rows[index]
        return self.cache_dir / f"{Path(r.name0).stem}__{Path(r.name1).stem}.npz"

    def compute_gt(self, index: int) -> np.ndarray:
        """``matches0 [L]`` int64 of pair ``index``, computed (no cache)."""
        r = self.rows[index]
        return coarse_gt(self._view(r.name0), self._view(r.name1), self._grid(r.name0), self._grid(r.name1),
                         self.conf.resolution, self._scale(r.name0), self._scale(r.name1), rel_tol=self.conf.rel_tol)

    def gt(self, index: int) -> tuple[np.ndarray, bool]:
        """``matches0 [L]`` int64 of pair ``index`` from the cache, computed and written when missing or bad.

        Returns:
            ``matches0`` and whether it was computed now.
        """
        r = self.rows[index]
        (h0, w0), (h1, w1) = self._grid(r.name0), self._grid(r.name1)
        path = self.cache_path(index)
        m = _load_cached(path, h0 * w0, h1 * w1)
        if m is not None:
            return m, False
        m = self.compute_gt(index)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, matches0=m)
        return m, True

    def _image(self, name: str, rng: np.random.Generator | None) -> torch.Tensor:
        path, cam = self.root / name, self.cameras[name]
        gray = rgb_to_gray(read_image(path))
        if gray.shape != (cam.height, cam.width):
            raise InputError(f"{path}: image is {gray.shape[1]}x{gray.shape[0]}, its camera {cam.width}x{cam.height}")
        size = self.size_of(name)
        if size != (cam.width, cam.height):
            gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
        if rng is not None:
            gray = augment_photometric(rng, gray, self.conf.photometric)
        return torch.from_numpy(np.ascontiguousarray(gray, dtype=np.float32))[None]

    def __getitem__(self, index: int) -> PairItem:
        r = self.rows[index]
        rng = np.random.default_rng([self.conf.seed, self.epoch, index]) if self.augment else None
        image0, image1 = self._image(r.name0, rng), self._image(r.name1, rng)
        matches0, _ = self.gt(index)
        K0 = resized_K(self.cameras[r.name0].K_opencv, self._scale(r.name0))
        K1 = resized_K(self.cameras[r.name1].K_opencv, self._scale(r.name1))
        if self.conf.crop is not None and self.split == "train":
            res = self.conf.resolution
            crop_rng = np.random.default_rng([self.conf.seed, self.epoch, index, 1])
            (oy0, ox0), (oy1, ox1), matches0 = crop_windows(
                matches0, self._grid(r.name0), self._grid(r.name1),
                (self.conf.crop[1] // res, self.conf.crop[0] // res), crop_rng)
            ch, cw = self.conf.crop[1], self.conf.crop[0]
            image0 = image0[:, oy0 * res:oy0 * res + ch, ox0 * res:ox0 * res + cw].contiguous()
            image1 = image1[:, oy1 * res:oy1 * res + ch, ox1 * res:ox1 * res + cw].contiguous()
            K0, K1 = K0.copy(), K1.copy()
            K0[0, 2] -= ox0 * res
            K0[1, 2] -= oy0 * res
            K1[0, 2] -= ox1 * res
            K1[1, 2] -= oy1 * res
        return {
            "image0": image0,
            "image1": image1,
            "matches0": torch.from_numpy(matches0.astype(np.int64)),
            "K0": torch.from_numpy(K0.astype(np.float32)),
            "K1": torch.from_numpy(K1.astype(np.float32)),
            "T_0to1": torch.from_numpy(relative_pose(self.poses[r.name0], self.poses[r.name1]).astype(np.float32)),
            "overlap": float(r.overlap),
            "level": int(r.level),
            "name": r.name0,
        }


def crop_windows(matches0: np.ndarray, hw0: tuple[int, int], hw1: tuple[int, int], crop_hw: tuple[int, int],
                 rng: np.random.Generator) -> tuple[tuple[int, int], tuple[int, int], np.ndarray]:
    """Grid-aligned windows of ``crop_hw = (h, w)`` cells in both grids and the window's ``matches0``.

    Returns:
        ``(row, col)`` offsets (cells) of the windows of image 0 and image 1, and ``matches0 [h w]`` int64 of
        the window of image 0 into the window of image 1 (-1: no match, or its match lies outside).
    """
    (h0, w0), (h1, w1), (h, w) = hw0, hw1, crop_hw
    if h > min(h0, h1) or w > min(w0, w1):
        raise ValueError(f"crop of {w}x{h} cells does not fit grids {w0}x{h0} and {w1}x{h1}")
    oy0, ox0 = int(rng.integers(0, h0 - h + 1)), int(rng.integers(0, w0 - w + 1))
    rows, cols = np.meshgrid(np.arange(oy0, oy0 + h), np.arange(ox0, ox0 + w), indexing="ij")
    target = matches0[(rows * w0 + cols).reshape(-1)]
    if (target >= 0).any():
        ty, tx = np.divmod(target[target >= 0], w1)
        cy, cx = float(np.median(ty)), float(np.median(tx))
    else:
        cy, cx = rng.uniform(0, h1), rng.uniform(0, w1)
    cy += rng.uniform(-h / 4, h / 4)
    cx += rng.uniform(-w / 4, w / 4)
    oy1 = int(np.clip(round(cy - h / 2), 0, h1 - h))
    ox1 = int(np.clip(round(cx - w / 2), 0, w1 - w))
    out = np.full(h * w, -1, np.int64)
    ok = target >= 0
    ty, tx = np.divmod(np.where(ok, target, 0), w1)
    ty, tx = ty - oy1, tx - ox1
    ok &= (ty >= 0) & (ty < h) & (tx >= 0) & (tx < w)
    out[ok] = (ty * w + tx)[ok]
    return (oy0, ox0), (oy1, ox1), out


def prepare_gt(dataset: WorldPairs, progress: bool = True) -> int:
    """Fill the ground-truth cache of every pair of ``dataset``; returns how many were computed now."""
    computed = 0
    for i in progress_bar(range(len(dataset)), total=len(dataset), desc="loftr gt", enabled=progress):
        computed += int(dataset.gt(i)[1])
    return computed


__all__ = ["SPLITS", "PairItem", "WorldPairs", "WorldPairsConf", "augment_photometric", "crop_windows", "gt_key",
           "prepare_gt", "relative_pose", "resized_K"]
