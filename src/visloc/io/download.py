"""Resumable, verified HTTP downloads of public datasets, for the explicit ``visloc data ... download`` commands.

Nothing else in visloc reaches the network: extraction, training, evaluation and the weights resolvers read
local files only, and ``tests/test_layering.py`` checks that only the download commands' modules
(``data.gldv2_download``, ``data.revisitop_download``) import this one.

:func:`download` fetches one URL into ``<dest>.part`` and renames it to ``dest`` only when it is whole
(and its md5 matches, when one is given):

- **Resume.** A ``.part`` left by a kill or a dropped connection is continued with an HTTP range request
  (``Range: bytes=<size>-``). A server that answers 200 instead of 206 sends the whole file: the part is
  restarted from byte 0. A 416 on a part of the announced total means the part is already whole.
- **Retries.** Timeouts, connection resets, short reads and HTTP 408 / 429 / 5xx are retried up to
  ``retries`` times, sleeping ``backoff_s`` doubled each time (capped at ``max_backoff_s``); every retry
  resumes where the part ends. Other 4xx (404...) fail at once: retrying cannot fix them.
- **Verification.** With ``md5``, a whole file whose digest differs is deleted (part included) and the
  call fails naming both digests; the caller decides whether to fetch it again.

Written on the standard library (``urllib``), as the project's dependencies hold no resumable
downloader: it reads ``Content-Range`` and ``Content-Length`` itself, so that a short body is never
taken for a whole file.
"""

from __future__ import annotations

import http.client
import logging
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from visloc.conf import ConfError
from visloc.errors import VislocError
from visloc.io.atomic import fsync_path
from visloc.io.checksums import md5_of

logger = logging.getLogger(__name__)

#: HTTP statuses worth another try: request timeout, too many requests, every server error
RETRY_STATUS = frozenset({408, 429, *range(500, 600)})
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


class DownloadError(VislocError, OSError):
    """A URL that could not be fetched whole (after the retries), or whose md5 differs."""


@dataclass(frozen=True)
class DownloadConf:
    """How hard :func:`download` tries.

    Attributes:
        timeout_s: socket timeout of the connection and of each read, seconds.
        retries: further attempts after the first, on retryable failures (module docstring).
        backoff_s: sleep before the first retry, doubled for each next one.
        max_backoff_s: the longest sleep between two attempts.
        chunk_bytes: bytes read and written per step.
        user_agent: the ``User-Agent`` header.
    """

    timeout_s: float = 60.0
    retries: int = 8
    backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    chunk_bytes: int = 1 << 20
    user_agent: str = "visloc-download/1"

    def __post_init__(self) -> None:
        for name in ("timeout_s", "backoff_s", "max_backoff_s"):
            if not getattr(self, name) >= 0 or (name == "timeout_s" and not self.timeout_s > 0):
                raise ConfError(f"DownloadConf.{name}: expected a positive number of seconds, got "
                                f"{getattr(self, name)!r}")
        if self.retries < 0:
            raise ConfError(f"DownloadConf.retries: expected >= 0, got {self.retries!r}")
        if self.chunk_bytes < 1:
            raise ConfError(f"DownloadConf.chunk_bytes: expected >= 1, got {self.chunk_bytes!r}")


def part_path(dest: str | Path) -> Path:
    """Where :func:`download` keeps the bytes of ``dest`` received so far."""
    dest = Path(dest)
    return dest.with_name(dest.name + ".part")


class _Retry(Exception):
    """A failure worth another attempt (its message says what happened)."""


def _total_of(response: http.client.HTTPResponse, offset: int) -> int | None:
    """The file's full size from a 206's ``Content-Range`` or a 200's ``Content-Length`` (None: unknown)."""
    if response.status == 206:
        m = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
        if m is None or int(m.group(1)) != offset:
            raise _Retry(f"206 with Content-Range {response.headers.get('Content-Range')!r} for offset {offset}")
        return None if m.group(3) == "*" else int(m.group(3))
    length = response.headers.get("Content-Length")
    return int(length) if length is not None and length.isdigit() else None


def _attempt(url: str, part: Path, conf: DownloadConf, progress: Callable[[int], None] | None) -> None:
    """One request: append what the server sends to ``part``; return when the part is whole."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": conf.user_agent, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=conf.timeout_s)  # noqa: S310 - http(s) URLs of the user
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # nothing past the part's end: whole when it has the announced size
            m = re.match(r"^bytes \*/(\d+)$", e.headers.get("Content-Range", "") if e.headers else "")
            if m is None or int(m.group(1)) == offset:
                return
            part.unlink()
            raise _Retry(f"416: the part ({offset} bytes) is longer than the file ({m.group(1)}): restarted") from None
        if e.code in RETRY_STATUS:
            raise _Retry(f"HTTP {e.code} {e.reason}") from None
        raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as e:
        raise _Retry(f"{type(e).__name__}: {getattr(e, 'reason', e)}") from None
    with response:
        if offset and response.status == 200:  # the server ignored the range: it sends the whole file
            logger.info("%s: no range support, restarting from byte 0", url)
            offset = 0
        total = _total_of(response, offset)
        mode = "ab" if offset else "wb"
        received = offset
        try:
            with open(part, mode) as f:
                while block := response.read(conf.chunk_bytes):
                    f.write(block)
                    received += len(block)
                    if progress is not None:
                        progress(len(block))
                f.flush()
                os.fsync(f.fileno())
        except (TimeoutError, ConnectionError, http.client.HTTPException) as e:
            raise _Retry(f"{type(e).__name__} after {received} bytes: {e}") from None
    if total is not None and received != total:
        raise _Retry(f"short read: {received} of {total} bytes")


def download(url: str, dest: str | Path, *, md5: str | None = None, conf: DownloadConf | None = None,
             progress: Callable[[int], None] | None = None, sleep: Callable[[float], None] = time.sleep) -> Path:
    """Fetch ``url`` into ``dest`` (module docstring); a ``dest`` already there (md5 matching) is kept.

    Args:
        url: an ``http(s)://`` (or ``file://``) URL.
        dest: the file to write; its folder is created.
        md5: the expected hex digest, or None (no check).
        conf: retries, timeouts, chunk size.
        progress: called with the number of bytes of each chunk received.
        sleep: how to wait between attempts (tests pass a recorder).

    Returns:
        ``dest``.

    Raises:
        DownloadError: a non-retryable HTTP status, the retries spent (naming the last failure), or an md5
            mismatch (the file is then deleted).
    """
    conf = conf or DownloadConf()
    dest = Path(dest)
    if dest.is_file() and (md5 is None or md5_of(dest) == md5.lower()):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(dest)
    failures: list[str] = []
    for attempt in range(conf.retries + 1):
        if attempt:
            wait = min(conf.backoff_s * 2 ** (attempt - 1), conf.max_backoff_s)
            logger.info("%s: %s; retry %d/%d in %.1f s", url, failures[-1], attempt, conf.retries, wait)
            sleep(wait)
        try:
            _attempt(url, part, conf, progress)
            break
        except _Retry as e:
            failures.append(str(e))
    else:
        raise DownloadError(f"{url}: failed after {conf.retries + 1} attempts, last: {failures[-1]} "
                            f"({part.stat().st_size if part.exists() else 0} bytes kept in {part.name})")
    if md5 is not None:
        got = md5_of(part)
        if got != md5.lower():
            part.unlink()
            raise DownloadError(f"{url}: md5 {got} does not match the expected {md5.lower()} (deleted; fetch again)")
    os.replace(part, dest)
    fsync_path(dest.parent)
    return dest


__all__ = ["RETRY_STATUS", "DownloadConf", "DownloadError", "download", "part_path"]
