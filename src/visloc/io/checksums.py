"""md5 digests of files and ``md5sum``-style checksum files (GLDv2 publishes one per tar)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from visloc.errors import VislocError


class ChecksumError(VislocError, ValueError):
    """A checksum file that does not list a name, or lists something that is not an md5 digest."""


def md5_of(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """The hex md5 of a file, read in chunks."""
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk_bytes), b""):
            h.update(block)
    return h.hexdigest()


def parse_md5_file(text: str, name: str, where: str = "md5 file") -> str:
    """The digest of ``name`` in an ``md5sum``-style text (``<hex>  <name>`` per line, ``*`` binary mark allowed).

    Raises:
        ChecksumError: ``name`` is not listed, or its digest is not 32 hex digits (naming ``where``).
    """
    for line in text.splitlines():
        parts = line.strip().split(maxsplit=1)
        if len(parts) == 2 and Path(parts[1].lstrip("*")).name == name:
            digest = parts[0].lower()
            if not re.fullmatch(r"[0-9a-f]{32}", digest):
                raise ChecksumError(f"{where}: {name}: {parts[0]!r} is not an md5 digest")
            return digest
    raise ChecksumError(f"{where}: no md5 for {name}")


__all__ = ["ChecksumError", "md5_of", "parse_md5_file"]
