"""``visloc data revisitop download``: Revisited Oxford / Paris and the 1M distractors, resumable and verified.

What is fetched from where, and how a folder is checked, is :mod:`visloc.data.revisitop_layout`'s. Per run,
into ``out/<dataset>/``:

1. The image list (``gnd_<dataset>.pkl`` or ``revisitop1m.txt``, through ``io.download``: range requests into
   a ``.part``, retries with backoff) is fetched and read; one that does not read is deleted and fetched again
   up to ``retries`` times. Without a list nothing else is fetched: no archive could be checked.
2. Archives recorded as extracted whose images have gone from ``jpg/`` (``.revisitop-download/<archive>.txt``
   lists the listed images each one brought) are fetched again.
3. Each archive, ``jobs`` at a time: fetched, then extracted by ``io.safe_tar`` (the compressed stream read
   whole first, members checked, flattened for Oxford / Paris) only if its images match the list
   (``revisitop_layout.check_archive``), so that nothing of a bad archive is ever written into ``jpg/``. One
   that fails to extract or to match is deleted and fetched again up to ``retries`` times, then named.
4. Every listed image must then be in ``jpg/``. When every archive passed its own check and some are still
   missing, the list is named with them: of several archives none is to blame alone (Paris' two, the 1M's
   hundred), so a re-run fetches nothing again; deleting the state file makes it fetch every archive again.

``out/<dataset>/revisitop-download.json`` records each archive's status (``data.download_run``, as GLDv2's
download: ``partial``, ``downloaded``, ``extracted`` with its image counts, or ``failed`` with the reason),
written atomically at every change: a re-run skips what is done and retries what failed. The summary names
each failure; it is ``ok`` only when nothing failed.

Upstream's script runs ``wget`` and ``tar`` unchecked for Oxford / Paris, and retries the 1M archives forever
without resuming a part, extracting each without a check.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from visloc.conf import ConfError
from visloc.data.download_run import DownloadState, DownloadSummary, TransferBars
from visloc.data.errors import DatasetError
from visloc.data.revisitop_layout import (
    SOURCES,
    RevisitopSource,
    check_archive,
    describe_missing,
    member_target,
    missing_images,
    read_image_list,
)
from visloc.io.atomic import atomic_write_text
from visloc.io.download import DownloadConf, DownloadError, download, part_path
from visloc.io.locks import output_lock
from visloc.io.safe_tar import UnsafeArchiveError, extract_tar

logger = logging.getLogger(__name__)

STATE_FILE = "revisitop-download.json"
#: per archive, the listed images it brought, one per line
PROVIDED_DIR = ".revisitop-download"
Dataset = Literal["roxford5k", "rparis6k", "revisitop1m"]


@dataclass(frozen=True)
class RevisitopDownloadConf:
    """What to fetch and how.

    Attributes:
        dataset: ``roxford5k``, ``rparis6k`` or ``revisitop1m``.
        jobs: archives fetched in parallel.
        keep_archives: keep each archive after extracting it.
        retries: fetches again of an archive that does not extract or match the list (and of a list that
            does not read).
        images_url: the folder URL of the archives ('': upstream's, ``revisitop_layout.SOURCES``).
        list_url: the folder URL of the image list ('': upstream's).
        http: per-file retries and timeouts.
    """

    dataset: Dataset = "roxford5k"
    jobs: int = 4
    keep_archives: bool = False
    retries: int = 2
    images_url: str = ""
    list_url: str = ""
    http: DownloadConf = field(default_factory=DownloadConf)

    def __post_init__(self) -> None:
        if self.dataset not in SOURCES:
            raise ConfError(f"RevisitopDownloadConf.dataset: expected one of {', '.join(SOURCES)}, "
                            f"got {self.dataset!r}")
        if self.jobs < 1 or self.retries < 0:
            raise ConfError(f"RevisitopDownloadConf: jobs >= 1 and retries >= 0, got {self.jobs}, {self.retries}")

    @property
    def source(self) -> RevisitopSource:
        """The published dataset."""
        return SOURCES[self.dataset]

    def url(self, name: str) -> str:
        """The URL of an archive or of the list."""
        s = self.source
        base = (self.list_url or s.list_url) if name == s.list_name else (self.images_url or s.images_url)
        return f"{base.rstrip('/')}/{name}"


def _first_line(e: Exception) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0]


def _fetch_list(folder: Path, conf: RevisitopDownloadConf) -> tuple[str, ...]:
    """The listed images (``read_image_list``), the list fetched (again, while it does not read)."""
    name, attempt = conf.source.list_name, 0
    while True:
        path = download(conf.url(name), folder / name, conf=conf.http)
        try:
            return read_image_list(conf.source, path)
        except DatasetError:
            path.unlink()
            if attempt == conf.retries:
                raise
            attempt += 1
            logger.warning("%s: does not read, fetching it again (%d/%d)", name, attempt, conf.retries)


def _provided(folder: Path, archive: str) -> Path:
    return folder / PROVIDED_DIR / f"{archive}.txt"


def _recheck(folder: Path, state: DownloadState, conf: RevisitopDownloadConf) -> None:
    """Reset the archives recorded as extracted whose listed images are no longer all in ``jpg/``."""
    for archive in conf.source.archives:
        if state.status(archive) != "extracted":
            continue
        record = _provided(folder, archive)
        names = record.read_text().splitlines() if record.is_file() else None
        gone = missing_images(folder / "jpg", names) if names is not None else ["(no record)"]
        if gone:
            logger.warning("%s: %d of its images are gone from jpg/, fetching it again", archive, len(gone))
            state.set(archive, "missing")


def _fetch_and_extract(name: str, folder: Path, conf: RevisitopDownloadConf, state: DownloadState,
                       listed: frozenset[str], bars: TransferBars) -> list[str]:
    """Fetch archive ``name`` and extract it if it matches the list, fetching it again while it does not."""
    source, archive, attempt = conf.source, folder / name, 0
    while True:
        download(conf.url(name), archive, conf=conf.http, progress=bars.add_bytes)
        state.set(name, "downloaded")
        try:
            return extract_tar(archive, folder / "jpg", target=member_target(source),
                               check=lambda plan: check_archive(source, name, listed, plan))
        except (UnsafeArchiveError, DatasetError) as e:
            archive.unlink(missing_ok=True)
            if attempt == conf.retries:
                raise DatasetError(f"{_first_line(e)} (deleted after {attempt + 1} fetches)") from None
            attempt += 1
            logger.warning("%s: %s; fetching it again (%d/%d)", name, _first_line(e), attempt, conf.retries)


def _fetch_archive(name: str, folder: Path, conf: RevisitopDownloadConf, state: DownloadState,
                   listed: frozenset[str], bars: TransferBars) -> bool:
    """Bring archive ``name`` to ``extracted``; False when it failed (the reason in ``state``)."""
    try:
        if state.status(name) == "extracted":
            return True
        if part_path(folder / name).exists():
            state.set(name, "partial")
        written = _fetch_and_extract(name, folder, conf, state, listed, bars)
        provided = [n for n in written if n in listed]
        atomic_write_text(_provided(folder, name), "".join(f"{n}\n" for n in provided))
        state.set(name, "extracted", images=len(written), listed=len(provided))
        if not conf.keep_archives:
            (folder / name).unlink()
    except (DownloadError, DatasetError) as e:
        state.set(name, "failed", _first_line(e))
        return False
    finally:
        bars.file_done()
    return True


def download_revisitop(out: str | Path, conf: RevisitopDownloadConf | None = None, *,
                       progress: bool = False) -> DownloadSummary:
    """Download, check and extract ``conf.dataset`` into ``out/<dataset>/`` (module docstring).

    One job writes ``out/<dataset>/`` at a time (``io.locks.output_lock``: a second raises ``OutputLockedError``).

    Args:
        out: the datasets folder (upstream's ``data/datasets/``): ``out/roxford5k/jpg/``,
            ``out/roxford5k/gnd_roxford5k.pkl``...
        conf: what to fetch.
        progress: draw progress bars on stderr (bytes, files, rate, ETA).

    Returns:
        the summary; ``ok`` is False while the list, an archive or a listed image is missing (each named).
    """
    conf = conf or RevisitopDownloadConf()
    source = conf.source
    folder = Path(out) / source.name
    folder.mkdir(parents=True, exist_ok=True)
    with output_lock(folder):
        summary = DownloadSummary(f"revisitop download {source.name}", "archives", folder)
        try:
            names = _fetch_list(folder, conf)
        except (DownloadError, DatasetError) as e:
            summary.failed[source.list_name] = f"{_first_line(e)} (no archive fetched: none could be checked)"
            return summary
        listed = frozenset(names)
        state = DownloadState(folder / STATE_FILE, "archives")
        _recheck(folder, state, conf)
        before = {a for a in source.archives if state.status(a) == "extracted"}
        with TransferBars(len(source.archives), source.name, enabled=progress) as bars, \
                ThreadPoolExecutor(max_workers=conf.jobs) as pool:
            results = list(pool.map(lambda a: _fetch_archive(a, folder, conf, state, listed, bars), source.archives))
        for archive, ok in zip(source.archives, results, strict=True):
            if not ok:
                summary.failed[archive] = str(state.entry(archive).get("reason", "failed"))
            else:
                (summary.already_done if archive in before else summary.done).append(archive)
        missing = missing_images(folder / "jpg", names)
        summary.notes.append(f"{len(names) - len(missing)} of the {len(names)} images of {source.list_name} in jpg/")
        if missing and summary.ok:
            summary.failed[source.list_name] = describe_missing(missing, len(names), source.list_name)
        return summary


__all__ = ["PROVIDED_DIR", "STATE_FILE", "RevisitopDownloadConf", "download_revisitop"]
