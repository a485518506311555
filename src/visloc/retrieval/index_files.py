"""The files of a saved retrieval index, and the one-line errors that name the faulty one.

``<path>`` is the faiss index (``faiss.write_index``), ``<path>.names.txt`` one image name a line in
the index's order, ``<path>.vectors.npy`` the database vectors ``[N, G]`` of a refined IVF-PQ
(``retrieval.refine``), and ``<path>.json`` the record: the resolved conf, dimension, size, a hash of
the names and a fingerprint of the vectors, so that a file from another index is caught on load. Each
file is written atomically, the record last. Version 1 records (before the refine stage) still load.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from visloc.conf import ConfError, conf_to_dict, load_conf
from visloc.errors import VislocError
from visloc.io.atomic import atomic_path, atomic_write_text
from visloc.retrieval.index_conf import IndexConf
from visloc.retrieval.refine import fingerprint

FORMAT = "visloc-retrieval-index"
#: 2: the refine stage (``conf.refine``, ``conf.k_factor``, the record's ``vectors``) and
#: ``conf.ef_construction``; 1 still loads
FORMAT_VERSION = 2
_READABLE_VERSIONS = (1, 2)


class RetrievalIndexError(VislocError, ValueError):
    """An index file that is missing, corrupt or inconsistent with its names or record."""


def names_path(path: Path) -> Path:
    """The names file of the index ``path``."""
    return path.with_name(path.name + ".names.txt")


def record_path(path: Path) -> Path:
    """The record of the index ``path``."""
    return path.with_name(path.name + ".json")


def vectors_path(path: Path) -> Path:
    """The refine vectors of the index ``path``."""
    return path.with_name(path.name + ".vectors.npy")


def names_hash(names: Sequence[str]) -> str:
    """sha256 of the names file's text."""
    return hashlib.sha256("".join(f"{n}\n" for n in names).encode()).hexdigest()


def faiss_reason(error: RuntimeError) -> str:
    """The message of a faiss exception without its C++ location: ``Error in <function> at <file>:<line>: ...``."""
    text = " ".join(str(error).split())
    found = re.search(r"\.(?:cpp|h):\d+: (?:Error: '.*?' failed: )?(.*)", text)
    return (found.group(1) if found else text)[:120] or type(error).__name__


def write_names(path: Path, names: Sequence[str]) -> None:
    """Write the names file of the index ``path``."""
    atomic_write_text(names_path(path), "".join(f"{n}\n" for n in names))


def read_names(path: Path) -> list[str]:
    """The names of the index ``path``."""
    path = names_path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RetrievalIndexError(f"{path}: names file of the index not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise RetrievalIndexError(f"{path}: unreadable names file ({type(e).__name__})") from None
    names = text.split("\n")
    return names[:-1] if names and names[-1] == "" else names


def write_record(path: Path, conf: IndexConf, dim: int, names: Sequence[str], vectors: np.ndarray | None) -> None:
    """Write the record of the index ``path`` (the last of its files)."""
    stored = None if vectors is None else {"file": vectors_path(path).name, "dtype": vectors.dtype.name,
                                           "fingerprint": fingerprint(vectors)}
    record = {"format": FORMAT, "version": FORMAT_VERSION, "dim": dim, "ntotal": len(names),
              "names_sha256": names_hash(names), "conf": conf_to_dict(conf), "vectors": stored}
    atomic_write_text(record_path(path), json.dumps(record, indent=2) + "\n")


def read_record(path: Path) -> dict:
    """The record of the index ``path`` with ``conf`` loaded as an ``IndexConf`` (``refine=none`` for version 1)."""
    path = record_path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RetrievalIndexError(f"{path}: record of the index not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RetrievalIndexError(f"{path}: unreadable index record ({type(e).__name__})") from None
    keys = {"format", "version", "dim", "ntotal", "names_sha256", "conf"}
    if not isinstance(record, dict) or record.get("format") != FORMAT or not keys <= set(record):
        raise RetrievalIndexError(f"{path}: not a visloc index record (expected keys {sorted(keys)})")
    if record["version"] not in _READABLE_VERSIONS:
        raise RetrievalIndexError(f"{path}: index format version {record['version']}, this visloc reads "
                                  f"{' and '.join(map(str, _READABLE_VERSIONS))}")
    conf = record["conf"]
    if record["version"] == 1 and isinstance(conf, dict):
        conf = {**conf, "refine": "none"}  # version 1 had no refine stage, and built HNSW with faiss's default
        if conf.get("kind") == "hnsw":
            conf.setdefault("ef_construction", 40)
        record["vectors"] = None
    try:
        record["conf"] = load_conf(IndexConf, conf, where=f"{path}: conf")
    except (ConfError, TypeError) as e:
        raise RetrievalIndexError(str(e).splitlines()[0]) from None
    stored = record.get("vectors")
    if record["conf"].refined and not (isinstance(stored, dict) and {"file", "dtype", "fingerprint"} <= set(stored)):
        raise RetrievalIndexError(f"{path}: conf.refine={record['conf'].refine} but no vectors file is recorded")
    return record


@contextlib.contextmanager
def vectors_writer(path: Path, n: int, dim: int, dtype: np.dtype) -> Iterator[np.ndarray]:
    """Yield a writable memory map ``[n, dim]`` that becomes ``<path>.vectors.npy`` in one rename on success."""
    with atomic_path(vectors_path(path)) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(n, dim))
        try:
            yield out
            out.flush()
        finally:
            del out


def write_vectors(path: Path, vectors: np.ndarray, chunk: int) -> None:
    """Copy ``vectors [N, G]`` (in memory or a memory map) to ``<path>.vectors.npy``, ``chunk`` rows at a time."""
    with vectors_writer(path, len(vectors), vectors.shape[1], vectors.dtype) as out:
        for start in range(0, len(vectors), chunk):
            out[start:start + chunk] = vectors[start:start + chunk]


def open_vectors(path: Path, record: dict) -> np.ndarray:
    """Memory-map the refine vectors of the index ``path`` and check them against its ``record``."""
    file = vectors_path(path)
    n, dim, stored = record["ntotal"], record["dim"], record["vectors"]
    try:
        with open(file, "rb") as fd:
            version = np.lib.format.read_magic(fd)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(fd)
            offset, size = fd.tell(), os.fstat(fd.fileno()).st_size
    except FileNotFoundError:
        raise RetrievalIndexError(f"{file}: refine vectors of the index not found") from None
    except (OSError, ValueError) as e:
        raise RetrievalIndexError(f"{file}: not a readable .npy file ({str(e).splitlines()[0][:80]})") from None
    if shape != (n, dim) or fortran or dtype.name != stored["dtype"]:
        raise RetrievalIndexError(f"{file}: {dtype.name} {list(shape)}, but {record_path(path).name} records "
                                  f"{stored['dtype']} [{n}, {dim}]")
    expected = offset + n * dim * dtype.itemsize
    if size < expected:
        raise RetrievalIndexError(f"{file}: truncated, {size} bytes where {expected} are expected")
    vectors = np.memmap(file, dtype=dtype, mode="r", offset=offset, shape=(n, dim))
    if fingerprint(vectors) != stored["fingerprint"]:
        raise RetrievalIndexError(f"{file}: the vectors differ from those the index was saved with")
    return vectors
