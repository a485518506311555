"""``visloc data gldv2 download``: GLDv2's tars, md5 files and metadata, resumable and verified, tar by tar.

Layout under ``base_url`` (GLDv2's, cvdfoundation/google-landmark ``download-dataset.sh``)::

    <base>/<split>/images_NNN.tar            train: 000-499, index: 000-099, test: 000-019
    <base>/md5sum/<split>/md5.images_NNN.txt md5sum's '<md5>  images_NNN.tar'
    <base>/metadata/train.csv, train_clean.csv (train), index.csv (index), test.csv (test)

Written under ``out/<split>/`` as DELF reads it (``data.world.gldv2_layout.Gldv2Train``): the CSVs, each
``md5.images_NNN.txt``, the image tree ``<a>/<b>/<c>/<id>.jpg`` extracted from the tars, and the tars
themselves with ``keep_tars`` (or ``extract=False``).

Per tar: its md5 file is fetched, the tar is fetched (``io.download``: range requests into a ``.part``,
retries with backoff), checked against the md5 and, on a mismatch, fetched again up to ``md5_retries``
times; a tar that never matches is **never extracted**. Extraction refuses a tar with any non-image member
(``gldv2_layout.extract_tar``, through ``io.safe_tar``). ``out/<split>/gldv2-download.json`` records each
tar's status (``missing``, ``partial``, ``downloaded``, ``verified``, ``extracted`` or ``failed`` with the
reason), written atomically at every change: a re-run skips what is done and retries what failed. The run
ends with a summary; it fails only if something is still failed, naming each (the state file and the summary
are ``data.download_run``'s, shared with ``data.revisitop_download``).

DELF's ``download_dataset.sh`` runs curl without retry or resume and extracts a tar even after its md5
check failed; MindSpore's script makes the user re-type the index range after a failure.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from visloc.conf import ConfError
from visloc.data.download_run import DownloadState, DownloadSummary, TransferBars
from visloc.data.errors import DatasetError
from visloc.data.world import gldv2_layout as gl
from visloc.io.checksums import ChecksumError, parse_md5_file
from visloc.io.download import DownloadConf, DownloadError, download, part_path
from visloc.io.locks import output_lock
from visloc.io.safe_tar import UnsafeArchiveError

logger = logging.getLogger(__name__)

GLDV2_BASE_URL = "https://s3.amazonaws.com/google-landmark"
#: tars per split, as published
NUM_TARS = {"train": 500, "index": 100, "test": 20}
METADATA = {"train": ("train.csv", "train_clean.csv"), "index": ("index.csv",), "test": ("test.csv",)}
STATE_FILE = "gldv2-download.json"


@dataclass(frozen=True)
class Gldv2DownloadConf:
    """What to fetch and how.

    Attributes:
        split: ``train``, ``index`` or ``test``.
        tars: tar indices; empty: all of the split's.
        base_url: the mirror (GLDv2's public one by default).
        jobs: tars fetched in parallel.
        keep_tars: keep each tar after extracting it.
        extract: extract the tars (off: download and verify only; the tars are kept).
        md5_retries: fetches again of a tar whose md5 differs.
        metadata: also fetch the split's CSVs.
        http: per-file retries and timeouts.
    """

    split: Literal["train", "index", "test"] = "train"
    tars: tuple[int, ...] = ()
    base_url: str = GLDV2_BASE_URL
    jobs: int = 4
    keep_tars: bool = False
    extract: bool = True
    md5_retries: int = 2
    metadata: bool = True
    http: DownloadConf = field(default_factory=DownloadConf)

    def __post_init__(self) -> None:
        if self.split not in NUM_TARS:
            raise ConfError(f"Gldv2DownloadConf.split: expected train, index or test, got {self.split!r}")
        n = NUM_TARS[self.split]
        bad = [i for i in self.tars if not 0 <= i < n]
        if bad:
            raise ConfError(f"Gldv2DownloadConf.tars: {self.split} has tars 0-{n - 1}, got {bad[0]}")
        if self.jobs < 1 or self.md5_retries < 0:
            raise ConfError(f"Gldv2DownloadConf: jobs >= 1 and md5_retries >= 0, got {self.jobs}, {self.md5_retries}")

    @property
    def indices(self) -> tuple[int, ...]:
        """The tars to fetch, sorted."""
        return tuple(sorted(set(self.tars))) if self.tars else tuple(range(NUM_TARS[self.split]))


def parse_tar_range(text: str) -> tuple[int, ...]:
    """``"0-4,7"`` -> ``(0, 1, 2, 3, 4, 7)``; ``ConfError`` naming ``--tars`` otherwise."""
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()) or (hi and int(hi) < int(lo)):
            raise ConfError(f"--tars: expected ranges like 0-499 or 3,7,10-12, got {text!r}")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return tuple(out)


def _fetch_tar(index: int, folder: Path, conf: Gldv2DownloadConf, state: DownloadState,
               progress: Callable[[int], None] | None) -> bool:
    """Bring tar ``index`` to ``extracted`` (or ``verified`` without ``extract``); False when it failed."""
    name, base = gl.tar_name(index), conf.base_url.rstrip("/")
    done = "extracted" if conf.extract else "verified"
    if state.status(name) == done:
        return True
    tar = folder / name
    try:
        md5_file = download(f"{base}/md5sum/{conf.split}/{gl.md5_name(index)}", folder / gl.md5_name(index),
                            conf=conf.http)
        want = parse_md5_file(md5_file.read_text(encoding="utf-8", errors="replace"), name, str(md5_file))
        if part_path(tar).exists():
            state.set(name, "partial")
        for attempt in range(conf.md5_retries + 1):
            try:
                download(f"{base}/{conf.split}/{name}", tar, md5=want, conf=conf.http, progress=progress)
                break
            except DownloadError as e:
                if "does not match" not in str(e) or attempt == conf.md5_retries:
                    raise
                logger.warning("%s: md5 mismatch, fetching it again (%d/%d)", name, attempt + 1, conf.md5_retries)
        state.set(name, "verified")
        if conf.extract:
            gl.extract_tar(tar, folder)
            state.set(name, "extracted")
            if not conf.keep_tars:
                tar.unlink()
    except (DownloadError, ChecksumError, UnsafeArchiveError, DatasetError) as e:
        state.set(name, "failed", str(e).splitlines()[0])
        return False
    return True


def download_gldv2(out: str | Path, conf: Gldv2DownloadConf | None = None, progress: bool = False) -> DownloadSummary:
    """Download (and extract) GLDv2's ``conf.split`` into ``out/<split>/`` (module docstring).

    One job writes ``out/<split>/`` at a time (``io.locks.output_lock``: a second one raises ``OutputLockedError``).

    Args:
        out: the dataset folder (``out/train/`` is DELF's ``gldv2_dataset/train/``).
        conf: what to fetch.
        progress: draw progress bars on stderr (bytes with rate; tars done with rate and ETA).

    Returns:
        the summary; ``ok`` is False when a tar or a CSV is still failed (each named with its reason).
    """
    conf = conf or Gldv2DownloadConf()
    folder = Path(out) / conf.split
    folder.mkdir(parents=True, exist_ok=True)
    with output_lock(folder):
        state = DownloadState(folder / STATE_FILE, "tars")
        summary = DownloadSummary("gldv2 download", "tars", folder)
        if conf.metadata:
            for csv_name in METADATA[conf.split]:
                try:
                    download(f"{conf.base_url.rstrip('/')}/metadata/{csv_name}", folder / csv_name, conf=conf.http)
                except DownloadError as e:
                    summary.failed[csv_name] = str(e).splitlines()[0]
        done = "extracted" if conf.extract else "verified"
        before = {gl.tar_name(i) for i in conf.indices if state.status(gl.tar_name(i)) == done}
        with TransferBars(len(conf.indices), f"gldv2 {conf.split}", enabled=progress) as bars, \
                ThreadPoolExecutor(max_workers=conf.jobs) as pool:
            def fetch(index: int) -> bool:
                try:
                    return _fetch_tar(index, folder, conf, state, bars.add_bytes)
                finally:
                    bars.file_done()

            results = list(pool.map(fetch, conf.indices))
        for index, ok in zip(conf.indices, results, strict=True):
            name = gl.tar_name(index)
            if not ok:
                summary.failed[name] = state.entry(name).get("reason", "failed")
            elif name in before:
                summary.already_done.append(name)
            else:
                summary.done.append(name)
        return summary


__all__ = ["GLDV2_BASE_URL", "METADATA", "NUM_TARS", "STATE_FILE", "Gldv2DownloadConf", "download_gldv2",
           "parse_tar_range"]
