"""Resumable verified downloads (io/download.py) against a loopback HTTP server with injected faults, and safe
all-or-nothing tar extraction (io/safe_tar.py)."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path, PurePosixPath

import numpy as np
import pytest

from visloc.conf import ConfError
from visloc.io.checksums import ChecksumError, md5_of, parse_md5_file
from visloc.io.download import DownloadConf, DownloadError, download, part_path
from visloc.io.safe_tar import UnsafeArchiveError, extract_tar

BODY = bytes(range(256)) * 1000  # 256 kB
FAST = DownloadConf(timeout_s=0.5, retries=3, backoff_s=0.01, chunk_bytes=4096)


@pytest.fixture()
def server(loopback) -> tuple[str, object]:
    return loopback({"/data/a.bin": BODY, "/md5/a.txt": f"{hashlib.md5(BODY).hexdigest()}  a.bin\n".encode()})


MD5 = hashlib.md5(BODY).hexdigest()


def test_a_clean_download_is_verified_and_renamed(server, tmp_path: Path) -> None:
    base, faults = server
    seen: list[int] = []
    out = download(f"{base}/data/a.bin", tmp_path / "d" / "a.bin", md5=MD5, conf=FAST, progress=seen.append)
    assert out.read_bytes() == BODY and sum(seen) == len(BODY) and not part_path(out).exists()
    assert download(f"{base}/data/a.bin", out, md5=MD5, conf=FAST) == out and len(faults.ranges) == 1  # kept


def test_a_dropped_connection_resumes_with_a_range_request(server, tmp_path: Path) -> None:
    base, faults = server
    faults.queue["/data/a.bin"] = ["drop", "drop"]
    waits: list[float] = []
    out = download(f"{base}/data/a.bin", tmp_path / "a.bin", md5=MD5, conf=FAST, sleep=waits.append)
    assert out.read_bytes() == BODY
    half, quarter = len(BODY) // 2, len(BODY) // 2 + len(BODY) // 4
    assert faults.ranges == [None, f"bytes={half}-", f"bytes={quarter}-"]
    assert waits == [0.01, 0.02]  # backoff doubles


def test_503_then_success_and_a_slow_server_are_retried(server, tmp_path: Path) -> None:
    base, faults = server
    faults.queue["/data/a.bin"] = ["503", "slow"]
    assert download(f"{base}/data/a.bin", tmp_path / "a.bin", md5=MD5, conf=FAST, sleep=lambda s: None
                    ).read_bytes() == BODY
    assert len(faults.ranges) == 3


def test_a_404_fails_at_once_naming_the_url(server, tmp_path: Path) -> None:
    base, faults = server
    with pytest.raises(DownloadError, match=r"^http://127\.0\.0\.1:\d+/data/missing\.bin: HTTP 404 Not Found$"):
        download(f"{base}/data/missing.bin", tmp_path / "m.bin", conf=FAST, sleep=lambda s: None)
    assert len(faults.ranges) == 1 and not (tmp_path / "m.bin").exists()


def test_retries_spent_keep_the_part_and_a_rerun_completes(server, tmp_path: Path) -> None:
    base, faults = server
    faults.queue["/data/a.bin"] = ["drop", "503", "503", "503"]
    conf = DownloadConf(timeout_s=0.5, retries=3, backoff_s=0.0, chunk_bytes=4096)
    with pytest.raises(DownloadError, match=r"failed after 4 attempts, last: HTTP 503 Service Unavailable "
                                            r"\(128000 bytes kept in a\.bin\.part\)$"):
        download(f"{base}/data/a.bin", tmp_path / "a.bin", md5=MD5, conf=conf)
    assert part_path(tmp_path / "a.bin").stat().st_size == len(BODY) // 2
    assert download(f"{base}/data/a.bin", tmp_path / "a.bin", md5=MD5, conf=conf).read_bytes() == BODY
    assert faults.ranges[-1] == f"bytes={len(BODY) // 2}-"


def test_an_md5_mismatch_deletes_the_file_and_a_server_without_ranges_restarts(server, tmp_path: Path) -> None:
    base, faults = server
    faults.queue["/data/a.bin"] = ["corrupt"]
    with pytest.raises(DownloadError, match=rf"md5 [0-9a-f]{{32}} does not match the expected {MD5} \(deleted"):
        download(f"{base}/data/a.bin", tmp_path / "a.bin", md5=MD5, conf=FAST)
    assert not (tmp_path / "a.bin").exists() and not part_path(tmp_path / "a.bin").exists()
    part_path(tmp_path / "a.bin").write_bytes(b"x" * 1000)  # a stale part; the server ignores the range
    faults.queue["/data/a.bin"] = ["norange"]
    assert download(f"{base}/data/a.bin", tmp_path / "a.bin", md5=MD5, conf=FAST).read_bytes() == BODY
    part_path(tmp_path / "b.bin").write_bytes(BODY)  # a whole part: the server answers 416
    assert download(f"{base}/data/a.bin", tmp_path / "b.bin", md5=MD5, conf=FAST).read_bytes() == BODY


def test_md5_files_and_bad_confs(server, tmp_path: Path) -> None:
    base, _ = server
    text = download(f"{base}/md5/a.txt", tmp_path / "a.txt", conf=FAST).read_text()
    assert parse_md5_file(text, "a.bin") == MD5 == md5_of(download(f"{base}/data/a.bin", tmp_path / "a.bin"))
    assert parse_md5_file(f"{MD5.upper()} *train/a.bin", "a.bin") == MD5
    with pytest.raises(ChecksumError, match=r"^md5\.txt: no md5 for b\.bin$"):
        parse_md5_file(text, "b.bin", "md5.txt")
    with pytest.raises(ChecksumError, match=r"^md5 file: a\.bin: 'xyz' is not an md5 digest$"):
        parse_md5_file("xyz  a.bin", "a.bin")
    with pytest.raises(ConfError, match=r"^DownloadConf\.retries: expected >= 0, got -1$"):
        DownloadConf(retries=-1)


# ---------------------------------------------------------------- safe extraction


def _tar(path: Path, members: list[tuple[str, bytes | None, bytes]], mode: str = "w") -> Path:
    """``(name, data or None, type)`` members; type ``tarfile.REGTYPE``, ``SYMTYPE``, ``LNKTYPE``...; ``mode``
    ``w:gz`` / ``w:bz2`` / ``w:xz`` compresses."""
    with tarfile.open(path, mode) as tf:
        for name, data, kind in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == tarfile.SYMTYPE or kind == tarfile.LNKTYPE:
                info.linkname = "a/b/0.jpg"
            if data is not None:
                info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def test_a_tar_extracts_into_a_shared_tree(tmp_path: Path) -> None:
    one = _tar(tmp_path / "images_000.tar", [("0/0/0/x.jpg", b"one", tarfile.REGTYPE)])
    two = _tar(tmp_path / "images_001.tar", [("0/0/0/y.jpg", b"two", tarfile.REGTYPE),
                                              ("0/0/1/z.jpg", b"three", tarfile.REGTYPE)])
    dest = tmp_path / "train"
    assert extract_tar(one, dest) == ["0/0/0/x.jpg"]
    assert extract_tar(two, dest) == ["0/0/0/y.jpg", "0/0/1/z.jpg"]
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()) == \
        ["0/0/0/x.jpg", "0/0/0/y.jpg", "0/0/1/z.jpg"]
    assert (dest / "0/0/1/z.jpg").read_bytes() == b"three" and not list(dest.glob(".extract-*"))


@pytest.mark.parametrize(("name", "kind", "problem"), [
    ("../evil.jpg", tarfile.REGTYPE, "has an unsafe path"),
    ("/etc/evil.jpg", tarfile.REGTYPE, "has an unsafe path"),
    ("0/link.jpg", tarfile.SYMTYPE, "is a symlink"),
    ("0/hard.jpg", tarfile.LNKTYPE, "is a hard link"),
    ("0/dev", tarfile.CHRTYPE, "is a device"),
])
def test_an_unsafe_member_refuses_the_whole_archive(tmp_path: Path, name: str, kind: bytes, problem: str) -> None:
    bad = _tar(tmp_path / "bad.tar", [("a/b/0.jpg", b"fine", tarfile.REGTYPE),
                                      (name, b"x" if kind == tarfile.REGTYPE else None, kind)])
    dest = tmp_path / "out"
    with pytest.raises(UnsafeArchiveError, match=rf"bad\.tar: member '{name}' {problem}; refusing the whole "):
        extract_tar(bad, dest)
    assert not dest.exists() and not (tmp_path / "evil.jpg").exists()  # nothing written, not even the good one


def test_a_truncated_or_missing_archive_is_one_line(tmp_path: Path) -> None:
    good = _tar(tmp_path / "g.tar", [("a.jpg", b"x" * 5000, tarfile.REGTYPE)])
    (tmp_path / "t.tar").write_bytes(good.read_bytes()[:700])
    with pytest.raises(UnsafeArchiveError, match=r"t\.tar: not a readable tar archive") as err:
        extract_tar(tmp_path / "t.tar", tmp_path / "out")
    assert "\n" not in str(err.value)
    with pytest.raises(UnsafeArchiveError, match=r"nope\.tar: archive not found$"):
        extract_tar(tmp_path / "nope.tar", tmp_path / "out")


@pytest.mark.parametrize("mode", ["w:gz", "w:bz2", "w:xz"])
def test_a_compressed_archive_extracts_flattened_and_a_flipped_byte_refuses_it(tmp_path: Path, mode: str) -> None:
    rng = np.random.default_rng(0)
    data = {f"paris/{lm}/paris_{lm}_{i:06d}.jpg": rng.bytes(3000) for lm in ("eiffel", "louvre") for i in range(3)}
    tgz = _tar(tmp_path / "paris_1-v1.tgz", [(n, b, tarfile.REGTYPE) for n, b in data.items()]
               + [("paris/README", b"not an image", tarfile.REGTYPE)], mode)
    plans: list[dict[str, str]] = []
    flat = extract_tar(tgz, tmp_path / "jpg", target=lambda n: PurePosixPath(n).name if n.endswith(".jpg") else None,
                       check=lambda plan: plans.append(dict(plan)))
    assert flat == sorted(PurePosixPath(n).name for n in data) and plans == [{PurePosixPath(n).name: n for n in data}]
    assert all((tmp_path / "jpg" / PurePosixPath(n).name).read_bytes() == b for n, b in data.items())
    assert sorted(p.name for p in (tmp_path / "jpg").iterdir()) == flat  # no README, no folder, no temporary
    # one byte flipped inside a member's data: tarfile alone would extract it (the headers still parse); the
    # stream's CRC refuses the archive before anything is written
    raw = bytearray(tgz.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (tmp_path / "bad.tgz").write_bytes(bytes(raw))
    with pytest.raises(UnsafeArchiveError, match=r"bad\.tgz: (corrupt or truncated compressed archive|not a readable)"):
        extract_tar(tmp_path / "bad.tgz", tmp_path / "out")
    (tmp_path / "short.tgz").write_bytes(bytes(raw[: len(raw) // 2]))
    with pytest.raises(UnsafeArchiveError, match=r"short\.tgz: corrupt or truncated compressed archive"):
        extract_tar(tmp_path / "short.tgz", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_target_collision_or_a_refusing_check_writes_nothing(tmp_path: Path) -> None:
    tar = _tar(tmp_path / "a.tar.gz", [("x/a.jpg", b"1", tarfile.REGTYPE), ("y/a.jpg", b"2", tarfile.REGTYPE)], "w:gz")
    with pytest.raises(UnsafeArchiveError, match=r"members 'x/a\.jpg' and 'y/a\.jpg' would both be written to "):
        extract_tar(tar, tmp_path / "out", target=lambda n: PurePosixPath(n).name)
    with pytest.raises(UnsafeArchiveError, match=r"target of member 'x/a\.jpg' '\.\./a\.jpg' has an unsafe path"):
        extract_tar(tar, tmp_path / "out", target=lambda n: "../a.jpg")

    def refuse(plan: object) -> None:
        raise ValueError("not the published content")

    with pytest.raises(ValueError, match="not the published content"):
        extract_tar(tar, tmp_path / "out", check=refuse)
    assert not (tmp_path / "out").exists()
    assert extract_tar(tar, tmp_path / "out") == ["x/a.jpg", "y/a.jpg"]


def test_a_sigkill_mid_download_then_a_rerun_gives_the_same_bytes(server, tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    base, faults = server
    faults.queue["/data/a.bin"] = ["trickle"]
    dest = tmp_path / "a.bin"
    code = ("import sys; from visloc.io.download import download, DownloadConf; "
            "download(sys.argv[1], sys.argv[2], conf=DownloadConf(chunk_bytes=1024))")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    proc = subprocess.Popen([sys.executable, "-c", code, f"{base}/data/a.bin", str(dest)], env=env)
    part = part_path(dest)
    deadline = time.monotonic() + 60
    while not (part.exists() and part.stat().st_size > 20_000) and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept = part.stat().st_size
    assert 20_000 < kept < len(BODY) and not dest.exists()
    assert download(f"{base}/data/a.bin", dest, md5=MD5, conf=FAST).read_bytes() == BODY
    assert faults.ranges[-1] == f"bytes={kept}-"  # resumed where the killed process stopped
