"""Oxford / Paris ground truth read from the published pickles without running code from them.

The files are ``gnd_roxford5k.pkl`` and ``gnd_rparis6k.pkl`` (revisited), or the original
``gnd_oxford5k.pkl`` / ``gnd_paris6k.pkl``: a dict with ``imlist`` (database image names),
``qimlist`` (query image names) and ``gnd``, one dict per query with ``bbx`` (query box) and index
vectors into ``imlist``: ``easy`` / ``hard`` / ``junk`` (revisited) or ``ok`` / ``junk`` (original).
The same dict may come as JSON (``.json``, lists for the vectors), which needs no restricted loading.
A plain ``pickle.load`` of a file can run arbitrary code, so these files are read with an unpickler
that resolves only what such a file needs (numpy arrays, dtypes and scalars, sets, and the latin-1
bytes encoding of old pickles) and refuses every other global before anything is called.
"""

from __future__ import annotations

import importlib
import json
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from visloc.data.errors import DatasetError

_ENTRY_KEYS = frozenset({"bbx", "easy", "hard", "junk", "ok"})


def _numpy_core(submodule: str) -> Any:
    """``numpy._core.<submodule>`` (numpy >= 2) or ``numpy.core.<submodule>`` (numpy 1)."""
    try:
        return importlib.import_module(f"numpy._core.{submodule}")
    except ImportError:  # numpy 1.x
        return importlib.import_module(f"numpy.core.{submodule}")


class _Refused(pickle.UnpicklingError):
    """A global, or arguments of an allowed one, that a ground-truth file has no reason to name."""


def _latin1_encode(obj: object, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` limited to how protocol-2 pickles store bytes: ``encode(str, "latin1")``."""
    if not isinstance(obj, str) or encoding.lower().replace("-", "") != "latin1" or errors != "strict":
        raise _Refused(f"refusing _codecs.encode with encoding {encoding!r}")
    return obj.encode("latin1")


def _empty_bytes(*args: object) -> bytes:
    """``bytes()`` as protocol-2 pickles store empty bytes; any argument is refused."""
    if args:
        raise _Refused("refusing bytes() with arguments")
    return b""


def _allowed() -> dict[tuple[str, str], Callable[[], Any]]:
    table: dict[tuple[str, str], Callable[[], Any]] = {
        ("numpy", "ndarray"): lambda: np.ndarray,
        ("numpy", "dtype"): lambda: np.dtype,
        ("_codecs", "encode"): lambda: _latin1_encode,
        ("builtins", "bytes"): lambda: _empty_bytes,
        ("__builtin__", "bytes"): lambda: _empty_bytes,
        ("builtins", "set"): lambda: set,
        ("builtins", "frozenset"): lambda: frozenset,
        ("__builtin__", "set"): lambda: set,
        ("__builtin__", "frozenset"): lambda: frozenset,
    }
    for core in ("numpy.core", "numpy._core"):
        table[(f"{core}.multiarray", "_reconstruct")] = lambda: _numpy_core("multiarray")._reconstruct
        table[(f"{core}.multiarray", "scalar")] = lambda: _numpy_core("multiarray").scalar
        table[(f"{core}.numeric", "_frombuffer")] = lambda: _numpy_core("numeric")._frombuffer
    return table


_ALLOWED = _allowed()


def _children(obj: object) -> list[object]:
    if isinstance(obj, (list, tuple, set, frozenset)):
        return list(obj)
    if isinstance(obj, dict):
        return [*obj.keys(), *obj.values()]
    if isinstance(obj, np.ndarray) and obj.dtype.kind == "O":
        return list(obj.ravel())
    return []


def check_bounds(root: object, max_depth: int, max_elements: int) -> None:
    """Refuse (``UnpicklingError``) a deep, huge (as a tree) or cyclic object graph.

    Refused: containers nested deeper than ``max_depth``, a tree of more than ``max_elements``
    objects (shared references counted each time they occur), a container that holds itself.

    A pickle of a few hundred bytes can reference one list from another 30 times over: loading it is
    cheap, but any code that walks it as a tree (``np.asarray``, a copy) meets 2**30 elements. The walk
    here visits each object once (sizes memoised by identity), so it costs the graph, not the tree.
    """
    sizes: dict[int, int] = {}
    path: set[int] = set()  # objects whose subtree is being walked: the current path from the root
    stack: list[tuple[object, bool]] = [(root, False)]
    while stack:
        obj, finished = stack.pop()
        key, children = id(obj), _children(obj)
        if finished:
            path.discard(key)
            sizes[key] = 1 + sum(sizes[id(c)] for c in children)
            if sizes[key] > max_elements:
                raise _Refused(f"refusing a structure of more than {max_elements} elements (shared references "
                               "counted each time)")
        elif key in path:
            raise _Refused("refusing a container that contains itself")
        elif key not in sizes:
            if not children:
                sizes[key] = 1
                continue
            path.add(key)
            if len(path) > max_depth:
                raise _Refused(f"refusing containers nested deeper than {max_depth}")
            stack.append((obj, True))
            stack.extend((c, False) for c in children if id(c) not in sizes)


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only numpy array / dtype / scalar reconstruction and builtin sets.

    Lists, dicts, tuples, strings, bytes and numbers need no global and load as usual. Any other
    global (``os.system``, ``builtins.eval``, a class of any module...) raises
    ``pickle.UnpicklingError`` when the pickle names it, before it could be called; so do
    ``_codecs.encode`` with another encoding than latin-1 and ``bytes`` with arguments. What it
    loads is bounded too (``check_bounds``): ``MAX_DEPTH`` levels of containers and ``MAX_ELEMENTS``
    objects in the tree (a published ``gnd_*.pkl`` has 5 levels and about 10k objects).
    """

    MAX_DEPTH = 16
    MAX_ELEMENTS = 20_000_000

    def load(self) -> Any:
        """Unpickle, then refuse a result nested or sized beyond the bounds."""
        obj = super().load()
        check_bounds(obj, self.MAX_DEPTH, self.MAX_ELEMENTS)
        return obj

    def find_class(self, module: str, name: str) -> Any:
        """Resolve an allowed global, refuse every other."""
        resolve = _ALLOWED.get((module, name))
        if resolve is None:
            raise _Refused(f"refusing to load global {module}.{name}: only numpy arrays, lists, "
                                         "dicts, strings and numbers are allowed in a ground-truth file")
        return resolve()

    def persistent_load(self, pid: Any) -> Any:
        """Refuse persistent ids (never used by ground-truth files)."""
        raise _Refused("refusing a persistent id")


def restricted_load(path: str | Path) -> Any:
    """Unpickle ``path`` with ``RestrictedUnpickler`` (latin-1 for Python 2 strings, as numpy needs)."""
    with open(path, "rb") as f:
        return RestrictedUnpickler(f, encoding="latin1").load()


@dataclass(frozen=True)
class OxfordParisGnd:
    """Ground truth of one Oxford / Paris file.

    Attributes:
        imlist: Database image names ``[db]`` (no extension).
        qimlist: Query image names ``[nq]``.
        gnd: One dict per query: int64 index vectors ``easy``, ``hard``, ``junk`` (revisited) or
            ``ok``, ``junk`` (original), and ``bbx`` (float64 ``[4]``: x1, y1, x2, y2) when present.
        path: The file it came from.
    """

    imlist: tuple[str, ...]
    qimlist: tuple[str, ...]
    gnd: tuple[dict[str, np.ndarray], ...]
    path: Path

    @property
    def is_revisited(self) -> bool:
        """Whether every query has ``easy``, ``hard`` and ``junk`` (the revisited annotation)."""
        return all({"easy", "hard", "junk"} <= set(g) for g in self.gnd)


def _names(data: dict, key: str, path: Path) -> tuple[str, ...]:
    if key not in data:
        raise DatasetError(f"{path}: no {key!r} key (keys: {sorted(map(str, data))})")
    names = data[key]
    if not isinstance(names, (list, tuple, np.ndarray)) or not all(isinstance(n, str) for n in names):
        raise DatasetError(f"{path}: {key!r} must be a list of image names")
    return tuple(str(n) for n in names)


def _indices(value: object, num_database: int, where: str) -> np.ndarray:
    arr = np.atleast_1d(np.asarray(value))
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iuf"):
        raise DatasetError(f"{where} must be a vector of database indices, got {arr.dtype} {list(arr.shape)}")
    if arr.size and arr.dtype.kind == "f" and not np.all(np.isfinite(arr) & (arr == np.round(arr))):
        raise DatasetError(f"{where} holds non-integer indices")
    out = arr.astype(np.int64) if arr.size else np.zeros(0, dtype=np.int64)
    if out.size and (out.min() < 0 or out.max() >= num_database):
        raise DatasetError(f"{where} holds indices outside [0, {num_database})")
    return out


def _entry(entry: object, num_database: int, where: str) -> dict[str, np.ndarray]:
    if not isinstance(entry, dict):
        raise DatasetError(f"{where} must be a dict, got {type(entry).__name__}")
    unknown = sorted(map(str, set(entry) - _ENTRY_KEYS))
    if unknown:
        raise DatasetError(f"{where} has unknown keys {unknown}")
    if not ({"easy", "hard", "junk"} <= set(entry) or "ok" in entry):
        raise DatasetError(f"{where} needs 'easy', 'hard' and 'junk' (revisited) or 'ok' (original)")
    out = {k: _indices(v, num_database, f"{where}[{k!r}]") for k, v in entry.items() if k != "bbx"}
    if "bbx" in entry:
        try:
            out["bbx"] = np.asarray(entry["bbx"], dtype=np.float64).reshape(-1)
        except (TypeError, ValueError) as e:
            raise DatasetError(f"{where}['bbx'] is not a box of numbers") from e
    return out


def _load_pickle(path: Path) -> Any:
    try:
        return restricted_load(path)
    except _Refused as e:
        raise DatasetError(f"{path}: {e}") from e
    except Exception as e:  # any failure to parse a malformed pickle is a problem of the user's file
        raise DatasetError(f"{path}: not a readable ground-truth pickle ({type(e).__name__}: {e})") from e


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"{path}: not a readable ground-truth JSON file ({type(e).__name__}: {e})") from e


def load_gnd(path: str | Path) -> OxfordParisGnd:
    """Read and validate a ``gnd_*.pkl`` file of Oxford / Paris (revisited or original), or its JSON form.

    A ``.json`` file holds the same dict with lists for the index vectors (``visloc.data.landmarks``
    writes one); other top-level keys are ignored there as in the pickles.

    Raises:
        DatasetError: ``path`` does not exist, the file is not a pickle, names a global other than numpy
            reconstruction, or its structure differs from the published one; the one-line message names ``path``.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: ground-truth file not found")
    if path.suffix.lower() == ".json":
        data = _load_json(path)
    else:
        data = _load_pickle(path)
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a dict with 'imlist', 'qimlist', 'gnd', got {type(data).__name__}")
    imlist, qimlist = _names(data, "imlist", path), _names(data, "qimlist", path)
    gnd = data.get("gnd")
    if not isinstance(gnd, (list, tuple)) or len(gnd) != len(qimlist):
        raise DatasetError(f"{path}: 'gnd' must be a list with one entry per query ({len(qimlist)})")
    entries = tuple(_entry(g, len(imlist), f"{path}: gnd[{i}]") for i, g in enumerate(gnd))
    return OxfordParisGnd(imlist, qimlist, entries, path)
