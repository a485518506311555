"""Faiss index files checked before ``faiss.read_index``: no size field may ask for more than the file holds.

Faiss reads a vector as a ``u64`` length followed by the elements, and resizes the vector to that
length *before* reading them: a forged length in a small file allocates up to 2**40 elements.
``check_index_file`` walks the file's structure (the index kinds visloc writes: ``IxFI``/``IxF2``
flat, ``IHNf`` HNSW over a flat storage, ``IwPQ`` IVF-PQ over a flat quantizer with array inverted
lists), reading only headers and lengths, and refuses a length that the bytes left cannot hold, an
unknown kind, or bytes after the end. The layout follows faiss's ``impl/index_read.cpp``: an index
header is ``i32 d, i64 ntotal, i64, i64, u8 is_trained, i32 metric`` (``f32 metric_arg`` when the
metric is above 1).
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path

from visloc.io.outputs import check_file_output, check_text_output, has_magic
from visloc.retrieval.index_files import RetrievalIndexError, names_path, record_path, vectors_path

_I32, _I64, _U64, _U8 = struct.Struct("<i"), struct.Struct("<q"), struct.Struct("<Q"), struct.Struct("<B")
_FLAT = (b"IxFI", b"IxF2", b"IxFl")
#: how the files of the index kinds visloc writes begin
INDEX_MAGICS = (*_FLAT, b"IHNf", b"IwPQ")
NPY_MAGIC = b"\x93NUMPY"


class FaissFileError(RetrievalIndexError):
    """A faiss index file that is cut short, damaged or of a kind visloc does not write."""


class _Bad(Exception):
    """Why the walk stopped (``check_index_file`` names the file)."""


class _Walk:
    def __init__(self, path: Path, data: bytes | mmap.mmap) -> None:
        self.path, self.data, self.pos, self.size = path, data, 0, len(data)

    def fail(self, what: str) -> _Bad:
        return _Bad(f"{what} at byte {self.pos}, which visloc does not write")

    def take(self, nbytes: int, what: str) -> int:
        if nbytes > self.size - self.pos:
            raise _Bad(f"cut short or damaged: {what} at byte {self.pos} needs {nbytes} bytes, "
                       f"{self.size - self.pos} left")
        start = self.pos
        self.pos += nbytes
        return start

    def read(self, fmt: struct.Struct, what: str) -> int:
        (value,) = fmt.unpack_from(self.data, self.take(fmt.size, what))
        return int(value)

    def fourcc(self) -> bytes:
        start = self.take(4, "an index kind")
        return bytes(self.data[start:start + 4])

    def vector(self, item: int, what: str) -> int:
        """Skip a faiss vector (``u64`` length, then ``length * item`` bytes); return its length."""
        n = self.read(_U64, f"the length of {what}")
        self.take(n * item, f"{what} ({n} elements)")
        return n

    def header(self) -> tuple[int, int]:
        d = self.read(_I32, "the dimension")
        ntotal = self.read(_I64, "the number of vectors")
        self.take(17, "the index header")
        if self.read(_I32, "the metric") > 1:
            self.take(4, "the metric argument")
        if d < 0 or ntotal < 0:
            raise _Bad(f"negative dimension {d} or size {ntotal} at byte {self.pos}")
        return d, ntotal

    def index(self) -> None:
        kind = self.fourcc()
        if kind in _FLAT:
            self.header()
            self.vector(4, "the stored vectors")
        elif kind == b"IHNf":
            self.header()
            for item, what in ((8, "assign_probas"), (4, "cum_nneighbor_per_level"), (4, "levels"),
                               (8, "offsets"), (4, "neighbors")):
                self.vector(item, f"the HNSW {what}")
            self.take(20, "the HNSW parameters")
            self.index()
        elif kind == b"IwPQ":
            self._ivfpq()
        else:
            raise self.fail(f"index kind {kind!r}")

    def _ivfpq(self) -> None:
        self.header()
        nlist = self.read(_U64, "nlist")
        self.take(8, "nprobe")
        self.index()  # the coarse quantizer
        if self.read(_U8, "the direct map type") > 1:
            raise self.fail("a hash-table direct map")
        self.vector(8, "the direct map")
        self.take(1, "by_residual")
        code_size = self.read(_U64, "the code size")
        self.take(24, "the product quantizer's sizes")
        self.vector(4, "the product quantizer's centroids")
        lists = self.fourcc()
        if lists != b"ilar":
            raise self.fail(f"inverted lists of kind {lists!r}")
        if self.read(_U64, "the inverted lists' nlist") != nlist or self.read(_U64, "their code size") != code_size:
            raise self.fail("inverted lists that disagree with the index header")
        if self.fourcc() != b"full":
            raise self.fail("a sparse inverted list table")
        n = self.read(_U64, "the number of inverted lists")
        if n != nlist:
            raise self.fail(f"{n} inverted list sizes for nlist {nlist}")
        sizes = [self.read(_U64, "an inverted list size") for _ in range(n)]
        for size in sizes:
            self.take(size * (code_size + 8), f"an inverted list of {size} codes")


def check_index_file(path: str | Path) -> None:
    """Walk the faiss index file ``path``; ``FaissFileError`` (one line naming it) on any inconsistency."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            if f.seek(0, 2) == 0:
                raise _Bad("empty file")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                walk = _Walk(path, data)
                walk.index()
                if walk.pos != walk.size:
                    raise _Bad(f"{walk.size - walk.pos} bytes after the index: damaged file")
    except _Bad as e:
        raise FaissFileError(f"{path}: not a readable faiss index ({e})") from None
    except OSError as e:
        raise FaissFileError(f"{path}: cannot read it ({e.strerror or type(e).__name__})") from None


def check_index_output(out: str | Path, option: str = "--out") -> None:
    """``OutputError`` unless ``out`` and its names, record and vectors files are absent or of their kind.

    An index file is recognised by its first four bytes (a damaged visloc index may be rebuilt over).
    """
    out = Path(out)
    check_file_output(out, "faiss index", lambda p: has_magic(p, *INDEX_MAGICS), option)
    check_text_output(names_path(out), "index names", option)
    check_text_output(record_path(out), "index record", option)
    check_file_output(vectors_path(out), "index vectors (.npy)", lambda p: has_magic(p, NPY_MAGIC), option)
