"""The two low-level formats under a TensorFlow checkpoint: LevelDB tables and protobuf wire messages.

TensorFlow's ``.index`` file is a LevelDB-format SSTable (``tensorflow/core/lib/io/table_format.txt``):

- a 48-byte footer: the metaindex and index ``BlockHandle`` s (two varint64 each: offset, size), zero
  padding to 40 bytes, and the little-endian magic ``0xdb4775248b80fb57``;
- blocks of entries ``varint32 shared, varint32 non_shared, varint32 value_length, key[shared:], value``
  (a key shares its first ``shared`` bytes with the previous key), then the ``uint32`` restart offsets and
  their count (restart points only speed up seeks: a full scan ignores them);
- after each block a 5-byte trailer: the compression type (0 none, 1 snappy) and the masked CRC-32C of
  the block's bytes and that type byte;
- the index block maps a separator key per data block to that block's handle.

Its values, and the ``_CHECKPOINTABLE_OBJECT_GRAPH`` tensor, are protobuf messages (``BundleHeaderProto``,
``BundleEntryProto``, ``TrackableObjectGraph``). They are decoded here by a small wire-format parser
because the ``protobuf`` package has no generated classes for these messages without TensorFlow, and
visloc must read official checkpoints without TensorFlow installed.
"""

from __future__ import annotations

import importlib
import struct
from collections import defaultdict
from pathlib import Path

from visloc.weights.converters import crc32c
from visloc.weights.load import WeightsError

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48
_TRAILER = 5


def read_varint(buf: bytes, pos: int, where: str = "") -> tuple[int, int]:
    """The varint at ``buf[pos:]`` and the position after it; ``WeightsError`` if it runs past the end."""
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise WeightsError(f"{where}: truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise WeightsError(f"{where}: malformed varint")


def parse_message(buf: bytes, where: str) -> dict[int, list[int | bytes]]:
    """Protobuf wire fields of ``buf``: field number -> values in order (varints and fixed as int, LEN as bytes).

    Signed int32 / int64 fields come back as unsigned 64-bit values; ``signed64`` turns them back.
    """
    fields: dict[int, list[int | bytes]] = defaultdict(list)
    pos = 0
    while pos < len(buf):
        tag, pos = read_varint(buf, pos, where)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = read_varint(buf, pos, where)
            fields[number].append(value)
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            if pos + size > len(buf):
                raise WeightsError(f"{where}: truncated protobuf field {number}")
            fields[number].append(int.from_bytes(buf[pos:pos + size], "little"))
            pos += size
        elif wire == 2:
            size, pos = read_varint(buf, pos, where)
            if pos + size > len(buf):
                raise WeightsError(f"{where}: truncated protobuf field {number}")
            fields[number].append(bytes(buf[pos:pos + size]))
            pos += size
        else:
            raise WeightsError(f"{where}: unsupported protobuf wire type {wire} (field {number})")
    return fields


def signed64(value: int) -> int:
    """A varint read as unsigned, as the int64 it encodes."""
    return value - (1 << 64) if value >= 1 << 63 else value


def first(fields: dict[int, list[int | bytes]], number: int, default: int | bytes) -> int | bytes:
    """The last value of field ``number`` (protobuf: the last one wins), else ``default``."""
    values = fields.get(number)
    return values[-1] if values else default


def _decompress(raw: bytes, kind: int, where: str) -> bytes:
    if kind == 0:
        return raw
    if kind != 1:
        raise WeightsError(f"{where}: unknown block compression type {kind}")
    for name, attr in (("snappy", "uncompress"), ("cramjam", "snappy")):
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        if name == "snappy":
            return bytes(getattr(mod, attr)(raw))
        return bytes(mod.snappy.decompress_raw(raw))
    raise WeightsError(f"{where}: snappy-compressed table block; install python-snappy or cramjam to read it")


def _block(data: bytes, offset: int, size: int, where: str) -> bytes:
    """The contents of the block at ``offset`` (``size`` bytes before its trailer), checked and decompressed."""
    end = offset + size + _TRAILER
    if offset < 0 or end > len(data) - FOOTER_SIZE:
        raise WeightsError(f"{where}: truncated file (block at {offset}, {size} bytes, file {len(data)} bytes)")
    kind = data[offset + size]
    (stored,) = struct.unpack_from("<I", data, offset + size + 1)
    if crc32c.unmask(stored) != crc32c.value(data[offset:offset + size + 1]):
        raise WeightsError(f"{where}: crc mismatch in the table block at byte {offset}")
    return _decompress(data[offset:offset + size], kind, where)


def _entries(block: bytes, where: str) -> list[tuple[bytes, bytes]]:
    """``(key, value)`` of every entry of a block, in order."""
    if len(block) < 4:
        raise WeightsError(f"{where}: table block shorter than its restart count")
    (num_restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    limit = len(block) - 4 * (num_restarts + 1)
    if limit < 0:
        raise WeightsError(f"{where}: table block with {num_restarts} restarts in {len(block)} bytes")
    out: list[tuple[bytes, bytes]] = []
    key, pos = b"", 0
    while pos < limit:
        shared, pos = read_varint(block, pos, where)
        non_shared, pos = read_varint(block, pos, where)
        value_len, pos = read_varint(block, pos, where)
        if shared > len(key) or pos + non_shared + value_len > limit:
            raise WeightsError(f"{where}: corrupt table entry at block byte {pos}")
        key = key[:shared] + block[pos:pos + non_shared]
        pos += non_shared
        out.append((key, block[pos:pos + value_len]))
        pos += value_len
    return out


def _handle(buf: bytes, pos: int, where: str) -> tuple[int, int, int]:
    offset, pos = read_varint(buf, pos, where)
    size, pos = read_varint(buf, pos, where)
    return offset, size, pos


def read_table(path: Path) -> list[tuple[bytes, bytes]]:
    """Every ``(key, value)`` of the LevelDB table at ``path``, in key order.

    Raises:
        WeightsError: naming ``path``: unreadable, too short, bad magic, truncated, crc mismatch.
    """
    try:
        data = path.read_bytes()
    except OSError as e:
        raise WeightsError(f"{path}: cannot read checkpoint index ({e.strerror})") from None
    where = str(path)
    if len(data) < FOOTER_SIZE:
        raise WeightsError(f"{where}: truncated file ({len(data)} bytes, a table footer is {FOOTER_SIZE})")
    footer = data[-FOOTER_SIZE:]
    (magic,) = struct.unpack_from("<Q", footer, 40)
    if magic != TABLE_MAGIC:
        raise WeightsError(f"{where}: bad magic {magic:#018x}: not a TensorFlow checkpoint index")
    _, _, pos = _handle(footer, 0, where)  # the metaindex block: empty in TF's tables
    index_offset, index_size, _ = _handle(footer, pos, where)
    out: list[tuple[bytes, bytes]] = []
    for _, handle in _entries(_block(data, index_offset, index_size, where), where):
        offset, size, _ = _handle(handle, 0, where)
        out.extend(_entries(_block(data, offset, size, where), where))
    return out


__all__ = ["TABLE_MAGIC", "first", "parse_message", "read_table", "read_varint", "signed64"]
