"""Google Landmarks v2 (GLDv2) train layout: write it (the built-in world's landmarks) and read it (real or built).

Layout facts, and where they were checked (the publisher's repository cvdfoundation/google-landmark: README
and ``download-dataset.sh``; its issues #4 and #8; DELF's GLDv2 training instructions):

- ``train.csv``: header ``id,url,landmark_id``; ``id`` a 16-character string (lower-case hex in the published
  ids and paths), ``url`` a string, ``landmark_id`` an integer (README).
- ``train_clean.csv``: header ``landmark_id,images``; ``images`` the space-separated ids of the class's images
  (the clean subset, contributed by team smlyaka; DELF's ``build_image_dataset`` reads it).
- Images: ``<a>/<b>/<c>/<id>.jpg`` with ``a``, ``b``, ``c`` the first three characters of the id
  (``0123456789abcdef`` lies at ``0/1/2/0123456789abcdef.jpg``), the tree inside every tar (README).
- Tars: ``images_000.tar`` ... ``images_499.tar`` for train (README), each with an md5 file
  ``md5.images_000.txt``; the download script compares the first field of ``md5sum``'s output with the first
  field of that file, and users check them with ``md5sum -c`` (issue #8), i.e. md5sum's format:
  ``<32-hex md5>  images_000.tar`` (two spaces).
- DELF reads ``gldv2_dataset/train/train.csv``, ``.../train/train_clean.csv`` and the images extracted into
  ``.../train/*/*/*/``: one folder holds the CSVs, the tars, their md5 files and the extracted tree.
  ``Gldv2Train`` reads that folder, with the images extracted or still packed in the tars.

Written tars are reproducible: members in the given order, regular files only (no directory entries),
mode 0644, uid / gid 0, empty owner names, mtime 0, ustar format.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
import tarfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from visloc.data.errors import DatasetError
from visloc.io.atomic import atomic_path, atomic_write_text
from visloc.io.checksums import ChecksumError, md5_of, parse_md5_file
from visloc.io.safe_tar import extract_tar as safe_extract

TRAIN_CSV = "train.csv"
TRAIN_CLEAN_CSV = "train_clean.csv"
TRAIN_HEADER = ("id", "url", "landmark_id")
CLEAN_HEADER = ("landmark_id", "images")
_ID = re.compile(r"[0-9a-f]{16}")
_MEMBER = re.compile(r"(?:\./)?([0-9a-f])/([0-9a-f])/([0-9a-f])/([0-9a-f]{16})\.jpg")


def check_image_id(image_id: str) -> str:
    """``image_id`` when it is 16 lower-case hex characters; ``ValueError`` otherwise."""
    if not isinstance(image_id, str) or not _ID.fullmatch(image_id):
        raise ValueError(f"GLDv2 image id must be 16 lower-case hex characters, got {image_id!r}")
    return image_id


def make_image_id(*key: object) -> str:
    """A stable 16-hex id from ``key`` (blake2b of its ``repr``): the same key always gives the same id."""
    return hashlib.blake2b(repr(key).encode(), digest_size=8).hexdigest()


def image_relpath(image_id: str) -> str:
    """``<a>/<b>/<c>/<id>.jpg`` of an image id, as in GLDv2's tars."""
    check_image_id(image_id)
    return f"{image_id[0]}/{image_id[1]}/{image_id[2]}/{image_id}.jpg"


def tar_name(index: int) -> str:
    """``images_000.tar`` for ``index`` 0."""
    return f"images_{index:03d}.tar"


def md5_name(index: int) -> str:
    """``md5.images_000.txt`` for ``index`` 0."""
    return f"md5.images_{index:03d}.txt"


@dataclass(frozen=True)
class Gldv2Row:
    """One row of ``train.csv``."""

    id: str
    url: str
    landmark_id: int


def write_train_csv(path: str | Path, rows: Iterable[Gldv2Row]) -> Path:
    """Write ``train.csv`` (``id,url,landmark_id``, rows in the given order) atomically."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(TRAIN_HEADER)
    for r in rows:
        writer.writerow((check_image_id(r.id), r.url, int(r.landmark_id)))
    return atomic_write_text(path, buf.getvalue())


def write_train_clean_csv(path: str | Path, classes: Mapping[int, Sequence[str]]) -> Path:
    """Write ``train_clean.csv`` (``landmark_id,images``; ids space-separated; classes by increasing id)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CLEAN_HEADER)
    for lid in sorted(classes):
        writer.writerow((int(lid), " ".join(check_image_id(i) for i in classes[lid])))
    return atomic_write_text(path, buf.getvalue())


def _rows(path: Path, header: tuple[str, ...]) -> Iterable[tuple[int, list[str]]]:
    if not path.is_file():
        raise DatasetError(f"{path}: not found")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        first = next(reader, None)
        if first is None or tuple(c.strip() for c in first) != header:
            raise DatasetError(f"{path}: header must be {','.join(header)}, got {first}")
        for line, row in enumerate(reader, start=2):
            if len(row) != len(header):
                raise DatasetError(f"{path}:{line}: expected {len(header)} fields, got {len(row)}")
            yield line, row


def _landmark(value: str, where: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise DatasetError(f"{where}: landmark_id must be an integer, got {value!r}") from None


def _id(value: str, where: str) -> str:
    if not _ID.fullmatch(value):
        raise DatasetError(f"{where}: image id must be 16 lower-case hex characters, got {value!r}")
    return value


def read_train_csv(path: str | Path) -> list[Gldv2Row]:
    """Rows of a GLDv2 ``train.csv``; ``DatasetError`` naming the file and line when malformed."""
    path = Path(path)
    return [Gldv2Row(_id(r[0], f"{path}:{n}"), r[1], _landmark(r[2], f"{path}:{n}"))
            for n, r in _rows(path, TRAIN_HEADER)]


def read_train_clean_csv(path: str | Path) -> dict[int, tuple[str, ...]]:
    """``landmark_id -> image ids`` of a GLDv2 ``train_clean.csv``."""
    path = Path(path)
    out: dict[int, tuple[str, ...]] = {}
    for n, (lid, images) in _rows(path, CLEAN_HEADER):
        where = f"{path}:{n}"
        out[_landmark(lid, where)] = tuple(_id(i, where) for i in images.split())
    return out


def write_md5_file(tar_path: str | Path, md5_path: str | Path) -> Path:
    """Write one line ``<md5>  <tar name>`` (md5sum's format) for ``tar_path``."""
    tar_path = Path(tar_path)
    return atomic_write_text(md5_path, f"{md5_of(tar_path)}  {tar_path.name}\n")


def verify_md5(tar_path: str | Path, md5_path: str | Path) -> None:
    """Check ``tar_path`` against its md5sum file; ``DatasetError`` on a mismatch or a malformed file."""
    tar_path, md5_path = Path(tar_path), Path(md5_path)
    if not md5_path.is_file():
        raise DatasetError(f"{md5_path}: not found")
    line = md5_path.read_text(encoding="utf-8").strip()
    try:
        want = parse_md5_file(line, tar_path.name, str(md5_path))
    except ChecksumError:
        raise DatasetError(f"{md5_path}: expected '<md5>  {tar_path.name}', got {line[:80]!r}") from None
    got = md5_of(tar_path)
    if got != want:
        raise DatasetError(f"{tar_path}: md5 {got} differs from {want} in {md5_path.name} (re-download it)")


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def write_tar(tar_path: str | Path, root: str | Path, image_ids: Sequence[str]) -> Path:
    """Pack ``root/<a>/<b>/<c>/<id>.jpg`` of ``image_ids`` (in order) into a reproducible tar, atomically."""
    root = Path(root)
    with atomic_path(tar_path) as tmp, tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
        for image_id in image_ids:
            rel = image_relpath(image_id)
            data = (root / rel).read_bytes()
            tar.addfile(_tarinfo(rel, len(data)), io.BytesIO(data))
    return Path(tar_path)


def pack_images(root: str | Path, image_ids: Sequence[str], images_per_tar: int) -> list[Path]:
    """Pack the images into ``root/images_NNN.tar`` (``images_per_tar`` each) with their md5 files.

    Returns the tar paths. Tars whose md5 file exists and matches are kept as they are (a re-run after an
    interruption packs only what is missing); tars with higher numbers left by an earlier, larger run are
    removed with their md5 files.
    """
    if images_per_tar < 1:
        raise ValueError(f"images_per_tar must be >= 1, got {images_per_tar}")
    root = Path(root)
    tars = []
    for k, start in enumerate(range(0, len(image_ids), images_per_tar)):
        tar, md5 = root / tar_name(k), root / md5_name(k)
        try:
            verify_md5(tar, md5)
        except (DatasetError, OSError):
            write_tar(tar, root, image_ids[start:start + images_per_tar])
            write_md5_file(tar, md5)
        tars.append(tar)
    for stale in sorted(root.glob("images_[0-9][0-9][0-9].tar")):
        if stale not in tars:
            stale.unlink()
            (root / f"md5.{stale.stem}.txt").unlink(missing_ok=True)
    return tars


def safe_members(tar: tarfile.TarFile, where: str | Path) -> dict[str, tarfile.TarInfo]:
    """``image id -> member`` of a GLDv2 tar; directories are skipped, anything else is refused.

    A member must be a regular file named ``[./]<a>/<b>/<c>/<id>.jpg`` with ``a, b, c`` the id's first three
    characters: no absolute path, no ``..``, no link or device can pass, so extracting it cannot escape.
    """
    out = {}
    for m in tar.getmembers():
        if m.isdir():
            continue
        match = _MEMBER.fullmatch(m.name)
        if not m.isfile() or match is None or "".join(match.group(1, 2, 3)) != match.group(4)[:3]:
            raise DatasetError(f"{where}: member {m.name!r} is not a GLDv2 image <a>/<b>/<c>/<id>.jpg")
        out[match.group(4)] = m
    return out


def extract_tar(tar_path: str | Path, root: str | Path) -> list[str]:
    """Extract a GLDv2 tar's images into ``root/<a>/<b>/<c>/``; return their ids.

    Every member is checked first (``safe_members``: GLDv2 image names only), then ``io.safe_tar`` extracts
    (its own checks, the ``data`` filter, files moved into place one by one with ``os.replace``).
    """
    with tarfile.open(tar_path, "r:") as tar:
        members = safe_members(tar, tar_path)
    safe_extract(tar_path, root)
    return list(members)


@dataclass(frozen=True)
class Gldv2Train:
    """A GLDv2 train folder (real or built): ``train.csv``, optional ``train_clean.csv``, images or tars.

    Attributes:
        root: the folder.
        rows: ``train.csv`` rows, file order.
        clean: ``landmark_id -> ids`` of ``train_clean.csv``, or None when the file is absent.
    """

    root: Path
    rows: tuple[Gldv2Row, ...]
    clean: dict[int, tuple[str, ...]] | None
    _packed: dict[str, tuple[Path, tarfile.TarInfo]] = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, root: str | Path, verify: bool = True) -> Gldv2Train:
        """Read the CSVs and index the tars (``images_NNN.tar``, checked against their md5 files if ``verify``)."""
        root = Path(root)
        rows = tuple(read_train_csv(root / TRAIN_CSV))
        clean = read_train_clean_csv(root / TRAIN_CLEAN_CSV) if (root / TRAIN_CLEAN_CSV).is_file() else None
        packed: dict[str, tuple[Path, tarfile.TarInfo]] = {}
        for tar_path in sorted(root.glob("images_[0-9][0-9][0-9].tar")):
            if verify:
                verify_md5(tar_path, root / f"md5.{tar_path.stem}.txt")
            with tarfile.open(tar_path, "r:") as tar:
                packed.update({i: (tar_path, m) for i, m in safe_members(tar, tar_path).items()})
        return cls(root, rows, clean, packed)

    def labels(self, clean: bool = True) -> dict[str, int]:
        """``image id -> landmark_id``: of ``train_clean.csv`` when ``clean`` and present, else of ``train.csv``."""
        if clean and self.clean is not None:
            return {i: lid for lid, ids in self.clean.items() for i in ids}
        return {r.id: r.landmark_id for r in self.rows}

    def read_bytes(self, image_id: str) -> bytes:
        """The JPEG bytes of an image: the extracted file when present, else its tar member."""
        path = self.root / image_relpath(image_id)
        if path.is_file():
            return path.read_bytes()
        if image_id not in self._packed:
            raise DatasetError(f"{path}: image not found, neither extracted nor in a tar of {self.root}")
        tar_path, member = self._packed[image_id]
        with tarfile.open(tar_path, "r:") as tar:
            src = tar.extractfile(member)
            if src is None:
                raise DatasetError(f"{tar_path}: member {member.name!r} has no data")
            return src.read()
