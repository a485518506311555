"""Read TensorFlow checkpoints (the TensorBundle format) without TensorFlow.

A checkpoint ``PREFIX`` (``model.ckpt-N``, ``ckpt-1``, a SavedModel's ``variables/variables``) is
``PREFIX.index``, a LevelDB table (``tf_table``), and the data shards ``PREFIX.data-0000K-of-0000N``.
The table's first key ``""`` holds a ``BundleHeaderProto`` (1: num_shards, 2: endianness 0 little / 1
big, 3: version); every other key is a tensor name whose value is a ``BundleEntryProto`` (1: dtype,
2: shape, 3: shard_id, 4: offset, 5: size, 6: masked crc32c of the bytes, 7: slices). The tensor's bytes
sit raw (row-major) in shard ``shard_id`` at ``offset``; string tensors are stored as ``varint64`` lengths,
a masked CRC-32C of the lengths (as ``uint32``), then the bytes. These protobuf messages are decoded with
``tf_table.parse_message``: without TensorFlow, the ``protobuf`` package has no classes for them.

TF2 object-based checkpoints name tensors by an object-graph path ending in ``/.ATTRIBUTES/VARIABLE_VALUE``
and store that graph (a ``TrackableObjectGraph``) in the string tensor ``_CHECKPOINTABLE_OBJECT_GRAPH``.
A SavedModel of a Keras model often keys its variables by the shortest path, through Keras's
``variables`` list (``_model/variables/17/.ATTRIBUTES/VARIABLE_VALUE``); ``object_paths`` recovers the
attribute paths (``_model/backbone/l2a/conv2a/kernel/.ATTRIBUTES/VARIABLE_VALUE``) from the graph.

Sliced (partitioned) variables, resource and variant tensors are listed but not read.
"""

from __future__ import annotations

import logging
import re
import struct
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from visloc.weights.converters import crc32c
from visloc.weights.converters.tf_table import first, parse_message, read_table, read_varint, signed64
from visloc.weights.load import WeightsError

logger = logging.getLogger(__name__)

#: TF ``DataType`` enum -> (name, numpy little-endian dtype); string, bfloat16 and the unreadable handled apart
DTYPES: dict[int, tuple[str, str | None]] = {
    1: ("float32", "<f4"), 2: ("float64", "<f8"), 3: ("int32", "<i4"), 4: ("uint8", "|u1"), 5: ("int16", "<i2"),
    6: ("int8", "|i1"), 7: ("string", None), 8: ("complex64", "<c8"), 9: ("int64", "<i8"), 10: ("bool", "|b1"),
    14: ("bfloat16", "<u2"), 17: ("uint16", "<u2"), 18: ("complex128", "<c16"), 19: ("float16", "<f2"),
    20: ("resource", None), 21: ("variant", None), 22: ("uint32", "<u4"), 23: ("uint64", "<u8"),
}
OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
#: child edges Keras adds for SavedModel serialisation (lists and metadata); attribute paths avoid them
GENERIC_EDGES = frozenset({"variables", "trainable_variables", "non_trainable_variables", "keras_api", "layers",
                           "metrics", "layer_regularization_losses", "layer_metrics", "regularization_losses"})
#: Keras's positional names of a model's layers (``layer-3``, ``layer_with_weights-0``), avoided as well
_POSITIONAL_EDGE = re.compile(r"^layer(?:_with_weights)?-\d+$")


def is_generic_edge(name: str) -> bool:
    """A child name that lists objects (Keras serialisation lists, positional layer names), not an attribute."""
    return name in GENERIC_EDGES or bool(_POSITIONAL_EDGE.match(name))
_STATE_PATH = re.compile(r'^model_checkpoint_path:\s*"(.*)"\s*$', re.MULTILINE)


@dataclass(frozen=True)
class BundleEntry:
    """Where one tensor of a bundle lives (a decoded ``BundleEntryProto``)."""

    dtype: int
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int
    crc: int | None  # masked crc32c, None when the entry has none
    sliced: bool


@dataclass(frozen=True)
class TrackableNode:
    """One node of a ``TrackableObjectGraph``.

    Attributes:
        children: ``(local_name, node_id)`` of each child.
        attributes: ``(name, full_name, checkpoint_key)`` of each saved tensor (``VARIABLE_VALUE``...).
    """

    children: tuple[tuple[str, int], ...]
    attributes: tuple[tuple[str, str, str], ...]


def _text(value: int | bytes) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _entry(raw: bytes, where: str) -> BundleEntry:
    f = parse_message(raw, where)
    shape_msg = first(f, 2, b"")
    dims = parse_message(shape_msg, where).get(2, []) if isinstance(shape_msg, bytes) else []
    shape = tuple(signed64(int(first(parse_message(d, where), 1, 0))) for d in dims if isinstance(d, bytes))
    crc = f.get(6)
    return BundleEntry(int(first(f, 1, 0)), shape, int(first(f, 3, 0)), int(first(f, 4, 0)), int(first(f, 5, 0)),
                       int(crc[-1]) if crc else None, bool(f.get(7)))


def resolve_prefix(path: str | Path) -> Path:
    """The checkpoint prefix that ``path`` names (module docstring), else a ``WeightsError`` naming it.

    Accepts ``PREFIX``, ``PREFIX.index``, a SavedModel's ``variables/`` folder or the SavedModel folder
    itself, and a training folder with a ``checkpoint`` state file or a single ``*.index``.
    """
    p = Path(path)
    if p.name.endswith(".index") and p.is_file():
        return p.with_name(p.name[: -len(".index")])
    if p.with_name(p.name + ".index").is_file():
        return p
    if not p.is_dir():
        raise WeightsError(f"{p}: no TensorFlow checkpoint here ({p.name}.index not found)")
    for candidate in (p / "variables", p / "variables" / "variables"):
        if candidate.with_name(candidate.name + ".index").is_file():
            return candidate
    state = p / "checkpoint"
    if state.is_file():
        match = _STATE_PATH.search(state.read_text(errors="replace"))
        if match:
            prefix = p / match.group(1)
            if prefix.with_name(prefix.name + ".index").is_file():
                return prefix
    indexes = sorted(p.glob("*.index"))
    if len(indexes) == 1:
        return indexes[0].with_name(indexes[0].name[: -len(".index")])
    found = f"{len(indexes)} *.index files" if indexes else "no *.index file"
    raise WeightsError(f"{p}: no TensorFlow checkpoint to choose ({found}, no usable 'checkpoint' state file)")


class TFBundle:
    """A TensorFlow checkpoint opened for reading (``TFBundle.open``); tensors are read on demand.

    Args:
        prefix: the checkpoint prefix (``resolve_prefix``).
        verify: check each tensor's CRC-32C when reading it (about 1 s per 100 MB without a native
            ``crc32c`` module).
    """

    def __init__(self, prefix: Path, verify: bool = True) -> None:
        self.prefix = prefix
        self.verify = verify
        index = prefix.with_name(prefix.name + ".index")
        rows = read_table(index)
        if not rows or rows[0][0] != b"":
            raise WeightsError(f"{index}: no bundle header (the first key must be empty)")
        header = parse_message(rows[0][1], str(index))
        self.num_shards = int(first(header, 1, 1))
        self.big_endian = int(first(header, 2, 0)) == 1
        self.entries: dict[str, BundleEntry] = {}
        for key, value in rows[1:]:
            if key.startswith(b"\x00"):  # a slice of a partitioned variable (ordered-code name)
                continue
            name = key.decode("utf-8", "replace")
            self.entries[name] = _entry(value, f"{index}: {name}")
        self._shards = [self.shard_path(i) for i in range(self.num_shards)]
        missing = [s for s in self._shards if not s.is_file()]
        if missing:
            raise WeightsError(f"{missing[0]}: missing data shard of checkpoint {prefix} "
                               f"({len(missing)} of {self.num_shards} missing)")
        self._graph: list[TrackableNode] | None = None

    @classmethod
    def open(cls, prefix_or_dir: str | Path, verify: bool = True) -> TFBundle:
        """The checkpoint at ``prefix_or_dir`` (``resolve_prefix``)."""
        return cls(resolve_prefix(prefix_or_dir), verify)

    def shard_path(self, shard: int) -> Path:
        """``PREFIX.data-0000K-of-0000N`` of shard ``shard``."""
        return self.prefix.with_name(f"{self.prefix.name}.data-{shard:05d}-of-{self.num_shards:05d}")

    def names(self) -> list[str]:
        """Every tensor name, sorted (TF's order)."""
        return list(self.entries)

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def _get(self, name: str) -> BundleEntry:
        try:
            return self.entries[name]
        except KeyError:
            raise WeightsError(f"{self.prefix}: no tensor {name!r} in the checkpoint") from None

    def shape(self, name: str) -> tuple[int, ...]:
        """The shape of tensor ``name``."""
        return self._get(name).shape

    def dtype(self, name: str) -> str:
        """TF's name of the dtype of tensor ``name`` (``float32``, ``bfloat16``, ``string``...)."""
        code = self._get(name).dtype
        return DTYPES[code][0] if code in DTYPES else f"dtype-{code}"

    def _bytes(self, name: str, entry: BundleEntry) -> bytes:
        shard = self._shards[entry.shard_id] if 0 <= entry.shard_id < self.num_shards else None
        if shard is None:
            raise WeightsError(f"{self.prefix}: tensor {name!r} in shard {entry.shard_id} of {self.num_shards}")
        with shard.open("rb") as f:
            f.seek(entry.offset)
            data = f.read(entry.size)
        if len(data) != entry.size:
            raise WeightsError(f"{shard}: truncated file: tensor {name!r} needs bytes {entry.offset}.."
                               f"{entry.offset + entry.size}, the file ends at {entry.offset + len(data)}")
        return data

    def _check_crc(self, name: str, entry: BundleEntry, crc: int) -> None:
        if entry.crc is not None and crc32c.unmask(entry.crc) != crc:
            raise WeightsError(f"{self._shards[entry.shard_id]}: crc mismatch in tensor {name!r} (corrupt file)")

    def read(self, name: str) -> np.ndarray:
        """Tensor ``name`` as a numpy array (bfloat16 as float32, strings as an object array of bytes).

        Raises:
            WeightsError: naming the file: unknown name, unsupported dtype or sliced tensor, missing or
                truncated shard, size or crc mismatch.
        """
        entry = self._get(name)
        label, np_dtype = DTYPES.get(entry.dtype, (f"dtype-{entry.dtype}", None))
        if entry.sliced:
            raise WeightsError(f"{self.prefix}: tensor {name!r} is sliced (a partitioned variable): not supported")
        if label == "string":
            return self._read_strings(name, entry)
        if np_dtype is None:
            raise WeightsError(f"{self.prefix}: tensor {name!r} has dtype {label}, which cannot be read as an array")
        dt = np.dtype(np_dtype).newbyteorder(">") if self.big_endian else np.dtype(np_dtype)
        count = int(np.prod(entry.shape, dtype=np.int64))
        if entry.size != count * dt.itemsize:
            raise WeightsError(f"{self.prefix}: tensor {name!r}: {entry.size} bytes stored, {label} x "
                               f"{list(entry.shape)} needs {count * dt.itemsize}")
        data = self._bytes(name, entry)
        if self.verify:
            self._check_crc(name, entry, crc32c.value(data))
        arr = np.frombuffer(data, dt).reshape(entry.shape).astype(dt.newbyteorder("="))
        if label == "bfloat16":
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        return arr

    def _read_strings(self, name: str, entry: BundleEntry) -> np.ndarray:
        count = int(np.prod(entry.shape, dtype=np.int64))
        data = self._bytes(name, entry) if entry.size else b""
        where = f"{self.shard_path(entry.shard_id)}: tensor {name!r}"
        lengths, pos, crc = [], 0, 0
        for _ in range(count if entry.size else 0):
            n, pos = read_varint(data, pos, where)
            lengths.append(n)
            crc = crc32c.extend(crc, struct.pack("<I" if n <= 0xFFFFFFFF else "<Q", n))
        if entry.size:
            if pos + 4 + sum(lengths) != len(data):
                raise WeightsError(f"{where}: string lengths do not add up to the {entry.size} bytes stored")
            (length_crc,) = struct.unpack_from("<I", data, pos)
            if self.verify and crc32c.unmask(length_crc) != crc:
                raise WeightsError(f"{where}: crc mismatch in the string lengths (corrupt file)")
            pos += 4
            if self.verify:
                self._check_crc(name, entry, crc32c.extend(crc32c.extend(crc, data[pos - 4:pos]), data[pos:]))
        out = np.empty(count, dtype=object)
        for i, n in enumerate(lengths):
            out[i] = data[pos:pos + n]
            pos += n
        if not entry.size:
            out[:] = b""
        return out.reshape(entry.shape)

    def items(self) -> Iterator[tuple[str, np.ndarray]]:
        """``(name, array)`` of every readable tensor (resource, variant and sliced ones skipped)."""
        for name, entry in self.entries.items():
            if entry.sliced or DTYPES.get(entry.dtype, ("", None))[0] in ("resource", "variant"):
                continue
            yield name, self.read(name)

    def object_graph(self) -> list[TrackableNode]:
        """The nodes of ``_CHECKPOINTABLE_OBJECT_GRAPH`` (node 0 is the root); [] in a TF1 checkpoint."""
        if self._graph is None:
            self._graph = []
            if OBJECT_GRAPH_KEY in self.entries:
                raw = self.read(OBJECT_GRAPH_KEY).reshape(-1)[0]
                where = f"{self.prefix}: {OBJECT_GRAPH_KEY}"
                for node in parse_message(raw, where).get(1, []):
                    self._graph.append(_node(node if isinstance(node, bytes) else b"", where))
        return self._graph

    def object_paths(self) -> dict[str, str]:
        """``checkpoint key -> attribute path key`` for every tensor the object graph names.

        The attribute path is the shortest path of child names from the root that avoids Keras's
        serialisation lists and positional layer names (``is_generic_edge``), ending like a TF2 key
        (``.../.ATTRIBUTES/VARIABLE_VALUE``); a node reachable only through those keeps its shortest path.
        Keys absent from the graph (all of them in a TF1 checkpoint) map to themselves.
        """
        nodes = self.object_graph()
        paths = _bfs_paths(nodes, is_generic_edge)
        for node_id, path in _bfs_paths(nodes, lambda _: False).items():
            paths.setdefault(node_id, path)
        out = {name: name for name in self.entries}
        for node_id, node in enumerate(nodes):
            for attr, _full, key in node.attributes:
                if node_id in paths:
                    out[key] = "/".join([*paths[node_id], ".ATTRIBUTES", attr])
        return out


def _node(raw: bytes, where: str) -> TrackableNode:
    f = parse_message(raw, where)
    children, attributes = [], []
    for ref in f.get(1, []):
        r = parse_message(ref if isinstance(ref, bytes) else b"", where)
        children.append((_text(first(r, 2, b"")), int(first(r, 1, 0))))
    for att in f.get(2, []):
        a = parse_message(att if isinstance(att, bytes) else b"", where)
        attributes.append((_text(first(a, 1, b"")), _text(first(a, 2, b"")), _text(first(a, 3, b""))))
    return TrackableNode(tuple(children), tuple(attributes))


def _bfs_paths(nodes: list[TrackableNode], skip: Callable[[str], bool]) -> dict[int, list[str]]:
    """Shortest child-name path from the root to every node, through edges that ``skip`` does not refuse."""
    if not nodes:
        return {}
    paths: dict[int, list[str]] = {0: []}
    queue = deque([0])
    while queue:
        i = queue.popleft()
        for name, child in nodes[i].children:
            if skip(name) or child in paths or not 0 <= child < len(nodes):
                continue
            paths[child] = [*paths[i], name]
            queue.append(child)
    return paths


__all__ = ["DTYPES", "GENERIC_EDGES", "OBJECT_GRAPH_KEY", "BundleEntry", "TFBundle", "TrackableNode", "is_generic_edge",
           "resolve_prefix"]
