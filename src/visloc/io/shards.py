"""Sharded HDF5 store: a commit costs the new items, not the existing file.

Layout (``<out>`` is what users open; both parts travel together):

- ``<out>.shards/<id>.h5``: immutable shards, one per commit, each holding that commit's items as
  ordinary groups in hloc's layout (``/<name>/keypoints`` ...).
- ``<out>``: the master, a small HDF5 file holding the root attributes and, per item, an HDF5
  external link ``<name> -> <out.name>.shards/<id>.h5:/<name>`` (nested names get real groups down
  to the link). Plain ``h5py`` and hloc's readers follow the links: ``fd[name]["keypoints"]``,
  ``name in fd``, attributes. HDF5 resolves a relative link target against the master's folder (not
  the working directory), so moving or copying the file *with* its ``.shards`` folder keeps it
  readable. Copied alone, ``name in fd`` still holds but ``fd[name]`` raises KeyError; visloc's
  readers then name the missing shard. ``consolidate(out)`` rewrites one self-contained file.
  ``h5py``'s ``visititems`` (hloc's ``list_h5_names``) does not follow external links: hand hloc's
  listing tools a consolidated file. visloc's listing (``item_names``) reads link names only.

Commit (``commit``), in this order:

1. the staged parts are streamed into ``<out>.shards/.<id>.h5.*.tmp``, fsynced, renamed ``<id>.h5``;
2. the master is copied (about 65 B per item, about 1/5000 of the feature data) to a temporary
   file beside ``<out>``; each new item is linked there (replacing an older link of the same name),
   the attributes are set; it is fsynced and renamed over ``<out>``;
3. the staged parts it merged are removed (a part staged since stays for the next commit);
4. shards the master does not list and temporary files of killed commits are deleted.

A file that is not a master (written by an older visloc, by hloc, or consolidated) is adopted at
step 2: it is hard-linked into the shard folder as a base shard (copied once where the filesystem
has no hard links) and the new master links its items; ``<out>``'s old inode is never written.

Failure analysis (a kill, SIGKILL included, at any moment):

- during 1: ``<out>`` untouched; a ``.tmp`` is left and removed by the next commit; the parts stay.
- between 1 and 2, or during 2: ``<out>`` untouched (the rename is the only change to it); the new
  shard is not listed by the master and is deleted by the next commit's step 4; the parts stay, and
  the next commit writes them again.
- between 2 and 3, or during 3: ``<out>`` is complete; the remaining parts are committed again by
  the next commit (duplicate bytes in the older shard, reclaimed by ``consolidate``).
- during 4: only unlisted files are deleted, so no linked shard is lost.
- power loss: the shard and the master are fsynced before their renames, and their folders after.

Two processes never commit into the same ``<out>`` at once: the jobs hold its writer lock
(``visloc.io.locks``) for their whole life. Shards whose items were all restaged later stay listed
until ``consolidate``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
from h5py import h5l  # pyright: ignore[reportAttributeAccessIssue]  (compiled module)

from visloc.errors import VislocError
from visloc.io import parts
from visloc.io.atomic import atomic_path, fsync_path, tmp_prefix

logger = logging.getLogger(__name__)

LAYOUT_ATTR = "visloc_store"
SHARDS_ATTR = "visloc_shards"
LAYOUT = "sharded-1"
STORE_ATTRS = (LAYOUT_ATTR, SHARDS_ATTR)


class StoreError(VislocError, ValueError):
    """An output file that cannot be committed into or consolidated."""


def shards_dir(out: Path) -> Path:
    """The shard folder of ``out``."""
    return out.with_name(out.name + ".shards")


def is_master(out: Path) -> bool:
    """Whether ``out`` is a shard master (False for a self-contained file or a missing one)."""
    if not out.exists():
        return False
    try:
        with h5py.File(out, "r", libver="latest") as fd:
            return fd.attrs.get(LAYOUT_ATTR) == LAYOUT
    except OSError:
        raise StoreError(f"{out}: not a readable HDF5 file; cannot commit into it") from None


def item_names(fd: h5py.File, members: tuple[str, ...]) -> list[str]:
    """Items of an open store of either layout, sorted; reads link names only, opens no shard.

    An item is an external link (the shard layout) or a group holding a link named in ``members``
    (``keypoints``, ``matches0``...; the self-contained layout).
    """
    linked: list[str] = []
    held: set[str] = set()

    def visit(name: bytes, info: h5l.LinkInfo) -> None:
        path = name.decode()
        if info.type == h5l.TYPE_EXTERNAL:
            linked.append(path)
        elif info.type == h5l.TYPE_HARD and "/" in path:
            parent, _, leaf = path.rpartition("/")
            if leaf in members:
                held.add(parent)

    fd.id.links.visit(visit, info=True)
    return sorted(held.union(linked))


def get_item(fd: h5py.File, name: str, error: type[Exception]) -> h5py.Group | h5py.Dataset | None:
    """``fd[name]`` or None if absent; ``error`` (naming the shard) if its shard cannot be opened."""
    obj = fd.get(name)
    if isinstance(obj, (h5py.Group, h5py.Dataset)):
        return obj
    link = fd.get(name, getlink=True)
    if obj is None and isinstance(link, h5py.ExternalLink):
        raise error(f"{fd.filename}: {name!r} is stored in {link.filename}, which cannot be opened "
                    "(copy the .shards folder with the file, or consolidate it)")
    return None


#: the most one item's dataset may take in memory (one image's features are some MB, at most a few hundred)
MAX_ARRAY_BYTES = 2 << 30
#: a dataset this large must have at least 1/RATIO of its bytes stored: HDF5 declares a shape without writing
#: its chunks (they read back as the fill value), so a small forged file can ask for any amount of memory
SPARSE_CHECK_BYTES, SPARSE_RATIO = 64 << 20, 1024


def read_array(grp: h5py.Group, key: str, error: type[Exception], where: str | Path) -> np.ndarray:
    """Dataset ``grp[key]`` read into memory; ``error`` naming ``where`` (the file) if it is not a dataset.

    h5py types ``grp[key]`` as a group, dataset or named datatype; a malformed file can hold any of them.
    The declared size is checked before reading: above ``MAX_ARRAY_BYTES``, or above ``SPARSE_CHECK_BYTES``
    with less than 1/``SPARSE_RATIO`` of it stored in the file, is ``error`` (a forged or damaged file),
    never an allocation of what the shape field asks.
    """
    obj = grp.get(key)
    if not isinstance(obj, h5py.Dataset):
        found = "missing" if obj is None else f"a {type(obj).__name__}, not a dataset"
        raise error(f"{where}: {grp.name}/{key} is {found} (malformed file)")
    declared = math.prod(obj.shape or ()) * obj.dtype.itemsize  # shape None: an empty (null) dataspace
    if declared > MAX_ARRAY_BYTES:
        raise error(f"{where}: {grp.name}/{key} declares shape {obj.shape} {obj.dtype} ({declared / 2**30:.1f} GiB), "
                    f"more than one item may hold ({MAX_ARRAY_BYTES / 2**30:.0f} GiB; a forged or damaged file)")
    if declared > SPARSE_CHECK_BYTES and obj.id.get_storage_size() * SPARSE_RATIO < declared:
        raise error(f"{where}: {grp.name}/{key} declares shape {obj.shape} {obj.dtype} ({declared / 2**20:.0f} MiB) "
                    f"but the file stores {obj.id.get_storage_size()} bytes of it (a forged or damaged file)")
    return np.asarray(obj[()])


def _new_id(tag: str = "") -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(4)}{tag}.h5"


def _remove_stale_tmp(out: Path) -> None:
    """Temporary files left by killed commits (one committer per ``out`` at a time)."""
    for path in out.parent.glob(tmp_prefix(out) + "*.tmp"):
        path.unlink(missing_ok=True)
    folder = shards_dir(out)
    if folder.is_dir():
        for path in folder.glob(".*.tmp"):
            path.unlink(missing_ok=True)


def _write_shard(out: Path, entries: list[tuple[str, Path]], write: parts.WriteFn) -> tuple[str, list[str]]:
    """Step 1: stream the parts into a new shard; return its id and the names written."""
    shard_id = _new_id()
    path = shards_dir(out) / shard_id
    names: list[str] = []
    with atomic_path(path, durable=True) as tmp:
        with h5py.File(tmp, "w", libver="latest") as fd:
            for _, part in entries:
                item = parts.load_part(part)
                if item is not None:
                    write(fd, *item)
                    names.append(item[0])
    if not names:
        path.unlink()
    return shard_id, names


def _link(fd: h5py.File, name: str, target: str) -> None:
    """Point ``name`` of the master at ``target:/name``, replacing an older link or group."""
    parent = ""
    for comp in name.split("/")[:-1]:
        parent = f"{parent}/{comp}" if parent else comp
        link = fd.get(parent, getlink=True)
        if link is None:
            break
        if not isinstance(link, h5py.HardLink):  # creating below it would write into a shard
            raise StoreError(f"{fd.filename}: cannot store {name!r} below the item {parent!r}")
    if fd.get(name, getlink=True) is not None:
        del fd[name]
    fd[name] = h5py.ExternalLink(target, "/" + name)


def _base_items(grp: h5py.Group, prefix: str = "") -> Iterator[str]:
    """Items of a self-contained file: groups holding a dataset (hloc's items), or lone datasets."""
    for key in grp:
        path = prefix + str(key)
        sub = grp[key] if isinstance(grp.get(key, getlink=True), h5py.HardLink) else None
        if isinstance(sub, h5py.Group) and not any(sub.get(k, getclass=True) is h5py.Dataset for k in sub):
            yield from _base_items(sub, path + "/")
        else:
            yield path


def _adopt(out: Path) -> Path:
    """Make a self-contained ``out`` a base shard without writing to it: a hard link (or one copy)."""
    folder = shards_dir(out)
    folder.mkdir(parents=True, exist_ok=True)
    base = folder / _new_id("-base")
    try:
        os.link(out, base)
    except OSError:
        logger.info("%s: no hard links on this filesystem; copying it once into %s", out, folder)
        with atomic_path(base, durable=True) as tmp:
            shutil.copyfile(out, tmp)
    fsync_path(folder)
    return base


def _publish(out: Path, shard_id: str, names: list[str], attrs: dict[str, str]) -> None:
    """Step 2: a new master (the old one plus links to the new shard), renamed over ``out``."""
    prefix = shards_dir(out).name + "/"
    base = _adopt(out) if out.exists() and not is_master(out) else None
    with atomic_path(out, durable=True) as tmp:
        if out.exists() and base is None:
            shutil.copyfile(out, tmp)
        with h5py.File(tmp, "a", libver="latest") as fd:
            listed: list[str] = json.loads(str(fd.attrs.get(SHARDS_ATTR, "[]")))
            if base is not None:
                with h5py.File(base, "r", libver="latest") as src:
                    for key, value in src.attrs.items():
                        fd.attrs[key] = value
                    for name in _base_items(src):
                        _link(fd, name, prefix + base.name)
                listed.append(prefix + base.name)
            for name in names:
                _link(fd, name, prefix + shard_id)
            if names:
                listed.append(prefix + shard_id)
            for key, value in attrs.items():
                fd.attrs[key] = value
            fd.attrs[LAYOUT_ATTR] = LAYOUT
            fd.attrs[SHARDS_ATTR] = json.dumps(listed)


def _collect(out: Path) -> None:
    """Step 4: delete the shards that the master does not list."""
    folder = shards_dir(out)
    if not folder.is_dir():
        return
    listed: set[str] = set()
    if out.exists():
        try:
            with h5py.File(out, "r", libver="latest") as fd:
                listed = set(json.loads(str(fd.attrs.get(SHARDS_ATTR, "[]"))))
        except (OSError, ValueError):
            return  # never delete what an unreadable master might link to
    for path in folder.iterdir():
        if path.suffix in (".h5", ".tmp") and f"{folder.name}/{path.name}" not in listed:
            path.unlink(missing_ok=True)
    if not any(folder.iterdir()):
        folder.rmdir()


def commit(out: str | Path, write: parts.WriteFn, attrs: dict[str, str] | None = None) -> int:
    """Commit the staged parts of ``out`` (see the module doc); return how many items were added.

    Args:
        out: the store (master) file; created if missing.
        write: ``write(fd, name, arrays)`` writes one item into an open shard.
        attrs: root attributes to set on ``out``.
    """
    out = Path(out)
    entries = parts.staged_entries(out)
    if not entries and not (attrs and not out.exists()):
        parts.discard_merged(out, [])
        _collect(out)  # a commit killed between its steps 3 and 4 left orphans
        return 0
    _remove_stale_tmp(out)
    shard_id, names = _write_shard(out, entries, write) if entries else ("", [])
    _publish(out, shard_id, names, dict(attrs or {}))
    parts.discard_merged(out, [path for _, path in entries])
    _collect(out)
    return len(names)


def consolidate(out: str | Path) -> Path:
    """Rewrite ``out`` as one self-contained HDF5 file (atomically) and delete its shards.

    Costs one copy of every item; the result is what hloc's own writers produce, and the next commit
    adopts it as a base shard. A file that is already self-contained is left as it is.

    Raises:
        OutputLockedError: a job is writing ``out`` (its lock is held).
    """
    from visloc.io.locks import output_lock

    out = Path(out)
    if not out.exists():
        raise StoreError(f"{out}: file not found; nothing to consolidate")
    with output_lock(out, "FILES"):  # a job still writing ``out`` would lose what it commits meanwhile
        if is_master(out):
            with atomic_path(out, durable=True) as tmp:
                with h5py.File(out, "r", libver="latest") as src, h5py.File(tmp, "w", libver="latest") as dst:
                    for key, value in src.attrs.items():
                        if key not in STORE_ATTRS:
                            dst.attrs[key] = value
                    for key in src:
                        src.copy(key, dst, name=key, expand_external=True)
        _collect(out)
    return out


def remove(out: str | Path) -> None:
    """Delete ``out``, its shards and its staged parts (to start afresh)."""
    out = Path(out)
    out.unlink(missing_ok=True)
    shutil.rmtree(shards_dir(out), ignore_errors=True)
    parts.discard(out)
