"""Shared fixtures: real photos, OpenCV's graf pair, and extractors/matchers built once per session."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

GRAF_DIR = Path("/usr/share/doc/opencv-doc/examples/data")
#: the images of the ``photo_dir`` fixture, as ``list_images`` names them (sorted)
PHOTO_NAMES = ("astronaut.png", "coffee.jpg", "sub/chelsea.png")


@dataclass(frozen=True)
class GrafPair:
    """Paths of graf1/graf3 and their ground-truth ``H_0to1`` (pixel-centre-at-0)."""

    path0: Path
    path1: Path
    H_0to1: np.ndarray


@pytest.fixture(scope="session")
def graf_pair() -> GrafPair:
    """OpenCV's graf1 -> graf3 pair (Debian opencv-doc), skipped when not installed."""
    files = [GRAF_DIR / "graf1.png", GRAF_DIR / "graf3.png", GRAF_DIR / "H1to3p.xml"]
    missing = [f for f in files if not f.is_file()]
    if missing:
        pytest.skip(f"{missing[0]} missing (apt-get install opencv-doc)")
    from visloc.data.homography import read_opencv_matrix

    H = read_opencv_matrix(files[2], "H13")
    return GrafPair(files[0], files[1], H / H[2, 2])


@pytest.fixture(scope="session")
def build_extractor() -> Callable[..., object]:
    """``build_extractor(name, overrides=())``: a registered extractor, built once per session."""
    from visloc.features import EXTRACTORS

    cache: dict[tuple[str, tuple[str, ...]], object] = {}

    def build(name: str, overrides: Sequence[str] = ()) -> object:
        key = (name, tuple(overrides))
        if key not in cache:
            cache[key] = EXTRACTORS.build(name, list(overrides))
        return cache[key]

    return build


@pytest.fixture(scope="session")
def build_matcher() -> Callable[..., object]:
    """``build_matcher(name, overrides=())``: a registered matcher, built once per session."""
    from visloc.matching import MATCHERS

    cache: dict[tuple[str, tuple[str, ...]], object] = {}

    def build(name: str, overrides: Sequence[str] = ()) -> object:
        key = (name, tuple(overrides))
        if key not in cache:
            cache[key] = MATCHERS.build(name, list(overrides))
        return cache[key]

    return build


def _rgb(name: str) -> np.ndarray:
    import skimage.data

    img = getattr(skimage.data, name)()
    return np.repeat(img[..., None], 3, 2) if img.ndim == 2 else img[..., :3]


@pytest.fixture(scope="session")
def photo_names() -> tuple[str, ...]:
    """Names of the images in ``photo_dir``, sorted as ``list_images`` returns them."""
    return PHOTO_NAMES


@pytest.fixture(scope="session")
def photo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of 3 real photos (PNG and JPEG), one in ``sub/``; names in ``photo_names``.

    Shared by the session: tests that add files must copy it first.
    """
    root = tmp_path_factory.mktemp("photos")
    (root / "sub").mkdir()
    for name, photo in zip(PHOTO_NAMES, ("astronaut", "coffee", "chelsea"), strict=True):
        bgr = cv2.cvtColor(_rgb(photo), cv2.COLOR_RGB2BGR)
        if not cv2.imwrite(str(root / name), bgr, [cv2.IMWRITE_JPEG_QUALITY, 95]):
            raise RuntimeError(f"cannot write {root / name}")
    return root


@pytest.fixture(scope="session")
def astronaut_320() -> np.ndarray:
    """skimage's astronaut as float32 RGB ``[240, 320, 3]`` in ``[0, 1]``."""
    img = cv2.resize(_rgb("astronaut"), (320, 240), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(img.astype(np.float32) / 255.0)


@pytest.fixture
def fake_pipeline(monkeypatch: pytest.MonkeyPatch) -> Callable[..., list[dict]]:
    """``fake_pipeline(module, name, result)`` replaces a pipeline function by a fake bound to its real signature.

    Each call is bound with ``inspect.signature(real).bind(*args, **kwargs)`` (defaults applied) and its
    arguments, by name, are appended to the returned list; a call that does not fit the real signature
    (a renamed or removed parameter, too many positional arguments) raises ``TypeError`` and fails the
    test. ``result`` is the fake's return value, or a function of the bound arguments that makes it.
    """
    import inspect

    def install(module: object, name: str, result: object) -> list[dict]:
        signature = inspect.signature(getattr(module, name))
        calls: list[dict] = []

        def fake(*args: object, **kwargs: object) -> object:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            calls.append(dict(bound.arguments))
            return result(calls[-1]) if callable(result) else result

        monkeypatch.setattr(module, name, fake)
        return calls

    return install
