"""Shared fixtures: real photos, OpenCV's graf pair, and extractors/matchers built once per session."""

from __future__ import annotations

import os

# OpenMP threads that spin while they wait made torch-heavy tests several times slower on a shared 2-core
# machine (the demo: 804 s spinning, 124 s passive); set before torch is imported, unless the caller chose.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from collections.abc import Callable, Sequence  # noqa: E402
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


def write_netvlad_checkpoint(path: Path, num_clusters: int = 8, whiten_dim: int | None = 256, seed: int = 0) -> Path:
    """A pytorch-NetVlad checkpoint (official layout: ``encoder.<i>.*``, ``pool.*``, ``WPCA.0.*``), random weights.

    The VGG16 convolutions get He-normal weights and zero biases (PyTorch's default conv init shrinks
    the activations over 13 layers until every image gives the same descriptor); assignments are
    sharp (scale 5) and centroids small, so residuals follow the image's features.
    """
    import torch

    from visloc.models.netvlad_vgg import VGG_DIM, NetVLADVGG16

    g = torch.Generator().manual_seed(seed)
    ref = NetVLADVGG16(num_clusters=num_clusters, whiten_dim=None)
    for m in ref.encoder:
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, generator=g)
            torch.nn.init.zeros_(m.bias)
    sd = {f"encoder.{k}": v for k, v in ref.encoder.state_dict().items()}
    sd["pool.conv.weight"] = 5.0 * torch.randn(num_clusters, VGG_DIM, 1, 1, generator=g)
    sd["pool.centroids"] = 0.05 * torch.randn(num_clusters, VGG_DIM, generator=g)
    if whiten_dim is not None:
        k_d = num_clusters * VGG_DIM
        sd["WPCA.0.weight"] = torch.randn(whiten_dim, k_d, 1, 1, generator=g) / k_d**0.5
        sd["WPCA.0.bias"] = torch.zeros(whiten_dim)
    torch.save({"epoch": 1, "state_dict": sd}, path)
    return path


@pytest.fixture(scope="session")
def netvlad_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``write_netvlad_checkpoint``'s file (K = 8, whitened to 256), written once per session."""
    return write_netvlad_checkpoint(tmp_path_factory.mktemp("netvlad") / "checkpoint.pth.tar")


def write_delg_checkpoint(path: Path, preset: str = "delg-r18", seed: int = 0) -> Path:
    """A visloc ``delg`` checkpoint of ``preset`` with random weights drawn from ``seed``."""
    import torch

    from visloc.models.delg import DELG, PRESETS
    from visloc.weights.checkpoint import save_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return save_model(path, "delg", DELG(PRESETS[preset]).eval())


@pytest.fixture(scope="session")
def delg_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``write_delg_checkpoint``'s ResNet-18 DELG (random weights), written once per session."""
    return write_delg_checkpoint(tmp_path_factory.mktemp("delg") / "delg_r18.pt")


@pytest.fixture(scope="session")
def ready_extractor(build_extractor, netvlad_checkpoint, delg_checkpoint, tmp_path_factory) -> Callable[..., object]:
    """``ready_extractor(name, overrides=())``: ``build_extractor`` plus the resources a part needs to run.

    Every registered extractor must build here: a part whose capabilities ``need`` something this
    fixture does not know fails loudly (add its resource here when registering it).
    """
    from visloc.features import EXTRACTORS
    from visloc.weights import hfnet as hfnet_weights

    vocab = tmp_path_factory.mktemp("vocab")
    weights = {"netvlad": netvlad_checkpoint, **dict.fromkeys(("delg", "delg-global", "delf", "delg-onnx"),
                                                                delg_checkpoint)}

    def build(name: str, overrides: Sequence[str] = ()) -> object:
        overrides = list(overrides)
        conf = EXTRACTORS.conf(name)
        if hasattr(conf, "allow_random") and not hfnet_weights.DEFAULT_WEIGHTS.is_file():
            overrides.append("allow_random=true")  # HF-Net before its default student is shipped
        needs = EXTRACTORS.capabilities(name).needs
        unknown = needs - {"vocabulary", "weights"}
        if unknown or ("weights" in needs and name not in weights):
            raise RuntimeError(f"ready_extractor: no test resource for {name}'s needs {sorted(needs)}")
        if name in weights:  # the test checkpoint, also where a shipped model would do (the DELG family)
            overrides.append(f"weights={weights[name]}")
        if "vocabulary" in needs:
            from visloc.features.vlad import vlad_spec

            local = vlad_spec(name).local  # a vocabulary of its local extractor's descriptors
            path = vocab / f"{local}.pt"
            if not path.exists():
                from visloc.features.api import extract_image
                from visloc.retrieval.vlad import learn_vocabulary, save_vocabulary

                # from other photos than the tests': an image's VLAD on a vocabulary of its own
                # descriptors is ~0 (the residuals of k-means cells sum to zero)
                model = build_extractor(local)
                descs = np.concatenate([extract_image(model, _rgb(n).astype(np.float32) / 255.0,
                                                      resize_max=320).descriptors.numpy()
                                        for n in ("rocket", "camera", "immunohistochemistry")])
                save_vocabulary(path, learn_vocabulary(descs, conf.num_clusters), {}, {})
            overrides.append(f"vocabulary={path}")
        return build_extractor(name, overrides)

    return build


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


# ---------------------------------------------------------------- a loopback HTTP server with injected faults


class Faults:
    """Per path, the faults the next requests meet, in order (then the file is served well)."""

    def __init__(self) -> None:
        self.queue: dict[str, list[str]] = {}
        self.ranges: list[str | None] = []


def _handler(files: dict[str, bytes], faults: Faults) -> type:
    import http.server
    import time

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            faults.ranges.append(self.headers.get("Range"))
            fault = faults.queue.get(self.path, [None]).pop(0) if faults.queue.get(self.path) else None
            if self.path not in files or fault == "404":
                self.send_error(404, "Not Found")
                return
            if fault == "503":
                self.send_error(503, "Service Unavailable")
                return
            if fault == "slow":
                time.sleep(1.0)  # past FAST.timeout_s before any byte
            body = files[self.path]
            if fault == "corrupt":
                body = body[:100] + bytes([body[100] ^ 0xFF]) + body[101:]
            start = 0
            rng = self.headers.get("Range")
            if rng and fault != "norange":
                start = int(rng.removeprefix("bytes=").removesuffix("-"))
                if start >= len(body):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(len(body) - start))
            self.end_headers()
            payload = body[start:]
            if fault == "trickle":  # 1 kB every 10 ms: slow enough to be killed mid-file
                for i in range(0, len(payload), 1024):
                    self.wfile.write(payload[i:i + 1024])
                    self.wfile.flush()
                    time.sleep(0.01)
                return
            if fault == "drop":  # half the body, then the connection closes
                self.wfile.write(payload[: len(payload) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(payload)

    return Handler


@pytest.fixture()
def loopback():
    """``loopback(files) -> (base_url, faults)``: serve ``{path: bytes}`` on 127.0.0.1 (ranges, 206 / 416) with
    ``faults.queue[path]`` the faults its next requests meet in order: ``404``, ``503``, ``slow`` (1 s before
    any byte), ``corrupt`` (one byte flipped), ``norange`` (200 whatever the Range), ``drop`` (half the body,
    then the connection closes), ``trickle`` (1 kB per
    10 ms). ``faults.ranges`` records each request's Range header."""
    import http.server
    import threading

    servers = []

    def start(files: dict[str, bytes]) -> tuple[str, Faults]:
        faults = Faults()
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(files, faults))
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        servers.append(httpd)
        return f"http://127.0.0.1:{httpd.server_address[1]}", faults

    yield start
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()
