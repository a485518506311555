"""``visloc data revisitop download`` against a loopback server serving a miniature Revisited Oxford / Paris and
1M distractors in upstream's URL layout, archives named as upstream's, with faults injected.

The miniature is the world's Revisited-style test set (``data.world.revisited``): its ``gnd_*.pkl`` is served
as ``gnd_roxford5k.pkl`` and ``gnd_rparis6k.pkl``, its images packed into ``oxbuild_images-v1.tgz`` (flat) and
``paris_1-v1.tgz`` / ``paris_2-v1.tgz`` (``paris/<landmark>/<name>.jpg``, one unlisted image more, as Paris'
archives hold the corrupt images the revisited lists left out), and copied under new names into the 100
``revisitop1m.N.tar.gz`` with ``revisitop1m.txt``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import tarfile
from pathlib import Path
from typing import IO, Any, cast

import pytest
from typer.testing import CliRunner

from visloc.cli import app
from visloc.conf import ConfError
from visloc.data.oxford_paris import load_gnd
from visloc.data.revisitop_download import PROVIDED_DIR, STATE_FILE, RevisitopDownloadConf, download_revisitop
from visloc.data.revisitop_layout import SOURCES
from visloc.data.scene.city_conf import CityConf
from visloc.data.world.landmarks import LandmarksConf, generate_landmarks
from visloc.data.world.revisited import RevisitedConf
from visloc.io.download import DownloadConf
from visloc.pipelines.eval_landmarks import load_revisitop

CITY = CityConf(num_streets_x=2, num_streets_y=4, block_length_m=40.0, block_depth_m=30.0, width=96, height=72,
                focal=75.0, split=(0.34, 0.33, 0.33), px_per_m=8.0, ground_px_per_m=4.0)
HTTP = DownloadConf(timeout_s=2.0, retries=2, backoff_s=0.0, chunk_bytes=1024)
#: upstream's folder URLs, as paths on the loopback server
OXFORD, PARIS = "/vgg/data/oxbuildings", "/vgg/data/parisbuildings"
GND = "/revisitop/data/datasets"
R1M = "/revisitop/revisitop1m"


def _tgz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _landmark(name: str) -> str:
    """``rtiny_q24_0`` / ``rtiny_24_0`` -> ``24``."""
    return name.split("_")[1].lstrip("q")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    conf = LandmarksConf(city=CITY, views_per_landmark=2, min_views=1,
                         revisited=RevisitedConf(name="rtiny", query_landmarks=2, queries_per_landmark=1,
                                                 db_views_per_landmark=2, distractor_views_per_landmark=1))
    return generate_landmarks(conf, tmp_path_factory.mktemp("rtiny"), split="test", progress=False).root


@pytest.fixture(scope="module")
def served(world: Path) -> dict[str, bytes]:
    """``{path: bytes}``: the three datasets in upstream's layout (a copy per test: tests swap files)."""
    images = {p.name: p.read_bytes() for p in sorted((world / "jpg").glob("*.jpg"))}
    gnd = (world / "gnd_rtiny.pkl").read_bytes()
    landmarks = sorted({_landmark(n) for n in images})
    first = set(landmarks[: len(landmarks) // 2])
    paris = [{f"paris/{_landmark(n)}/{n}": b for n, b in images.items() if (_landmark(n) in first) == part}
             for part in (True, False)]
    paris[1]["paris/general/paris_general_002391.jpg"] = next(iter(images.values()))  # unlisted
    files = {f"{OXFORD}/oxbuild_images-v1.tgz": _tgz(images), f"{GND}/roxford5k/gnd_roxford5k.pkl": gnd,
             f"{PARIS}/paris_1-v1.tgz": _tgz(paris[0]), f"{PARIS}/paris_2-v1.tgz": _tgz(paris[1]),
             f"{GND}/rparis6k/gnd_rparis6k.pkl": gnd}
    lines, blobs = [], list(images.values())
    for i in range(1, 101):  # 1 or 2 images per archive, in sub-folders as the list names them
        names = [f"{h[:2]}/{h}.jpg" for k in range(1 + i % 2)
                 for h in [hashlib.md5(f"{i}.{k}".encode()).hexdigest()]]
        files[f"{R1M}/jpg/revisitop1m.{i}.tar.gz"] = _tgz({n: blobs[(i + k) % len(blobs)] for k, n in enumerate(names)})
        lines += names
    files[f"{R1M}/revisitop1m.txt"] = "".join(f"{n}\n" for n in lines).encode()
    return files


def _conf(base: str, dataset: str, jobs: int = 4) -> RevisitopDownloadConf:
    images = {"roxford5k": OXFORD, "rparis6k": PARIS, "revisitop1m": f"{R1M}/jpg"}[dataset]
    lists = f"{GND}/{dataset}" if dataset != "revisitop1m" else R1M
    return RevisitopDownloadConf(dataset=cast(Any, dataset), jobs=jobs, images_url=base + images,
                                 list_url=base + lists, http=HTTP)


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _members(archive: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tf:
        return {m.name: cast(IO[bytes], tf.extractfile(m)).read() for m in tf.getmembers() if m.isfile()}


def test_oxford_a_corrupt_then_an_incomplete_archive_is_refetched_named_and_a_rerun_completes(
        served, world: Path, loopback, tmp_path: Path) -> None:
    files = dict(served)
    base, faults = loopback(files)
    archive = f"{OXFORD}/oxbuild_images-v1.tgz"
    good = files[archive]
    faults.queue[f"{GND}/roxford5k/gnd_roxford5k.pkl"] = ["drop"]  # resumed by range
    faults.queue[archive] = ["corrupt"]  # a flipped byte: the CRC refuses it, fetched again
    out = tmp_path / "datasets"
    first = download_revisitop(out, _conf(base, "roxford5k", jobs=1))
    assert first.ok and first.done == ["oxbuild_images-v1.tgz"], first.lines()
    assert faults.ranges.count(None) == 3 and any(r and r.startswith("bytes=") for r in faults.ranges)  # resumed
    gnd = load_gnd(world / "gnd_rtiny.pkl")
    listed = [f"{n}.jpg" for n in (*gnd.imlist, *gnd.qimlist)]
    assert _tree(out / "roxford5k" / "jpg") == sorted(listed)
    assert first.lines()[1] == f"  {len(listed)} of the {len(listed)} images of gnd_roxford5k.pkl in jpg/"
    # an archive missing one listed image (whole, a valid gzip): fetched again, named, nothing of it written
    fresh = tmp_path / "fresh"
    members = _members(good)
    dropped = sorted(members)[-1]
    files[archive] = _tgz({n: b for n, b in members.items() if n != dropped})
    bad = download_revisitop(fresh, _conf(base, "roxford5k"))
    assert not bad.ok and list(bad.failed) == ["oxbuild_images-v1.tgz"]
    why = bad.failed["oxbuild_images-v1.tgz"]
    assert why.startswith(f"oxbuild_images-v1.tgz ({len(listed) - 1} images): holds {len(listed) - 1} of the "
                          f"{len(listed)} images of gnd_roxford5k.pkl, missing {dropped}") and "after 3 fetches" in why
    assert not (fresh / "roxford5k" / "jpg").exists() and _tree(fresh / "roxford5k") == ["gnd_roxford5k.pkl",
                                                                                      STATE_FILE]
    files[archive] = good  # the mirror fixed: the re-run completes, and the reader opens the folder
    again = download_revisitop(fresh, _conf(base, "roxford5k"))
    assert again.ok and again.done == ["oxbuild_images-v1.tgz"]
    data = load_revisitop("roxford5k", fresh / "roxford5k")
    assert data.gnd.qimlist == gnd.qimlist and len(data.db_names) == len(gnd.imlist)
    assert all((fresh / "roxford5k" / "jpg" / n).read_bytes() == (world / "jpg" / n).read_bytes() for n in listed)


def test_paris_archives_are_flattened_a_404_is_named_and_a_rerun_completes(served, world: Path, loopback,
                                                                            tmp_path: Path) -> None:
    base, faults = loopback(dict(served))
    faults.queue[f"{PARIS}/paris_1-v1.tgz"] = ["404"] * 10
    faults.queue[f"{PARIS}/paris_2-v1.tgz"] = ["503", "drop", "norange"]  # a 503, half, then a 200 restart
    out = tmp_path / "datasets"
    first = download_revisitop(out, _conf(base, "rparis6k", jobs=2))
    assert not first.ok and list(first.failed) == ["paris_1-v1.tgz"] and first.done == ["paris_2-v1.tgz"]
    assert "HTTP 404" in first.failed["paris_1-v1.tgz"]
    jpg = out / "rparis6k" / "jpg"
    second_half = {p.split("/")[-1] for p in _members(served[f"{PARIS}/paris_2-v1.tgz"])}
    assert set(_tree(jpg)) == second_half  # flat: no paris/<landmark>/ folder
    state = json.loads((out / "rparis6k" / STATE_FILE).read_text())["archives"]
    assert state["paris_2-v1.tgz"] == {"status": "extracted", "images": len(second_half),
                                       "listed": len(second_half) - 1}  # the unlisted one extracted, not counted
    assert state["paris_1-v1.tgz"]["status"] == "failed"
    faults.queue[f"{PARIS}/paris_1-v1.tgz"] = []
    again = download_revisitop(out, _conf(base, "rparis6k", jobs=2))
    assert again.ok and again.done == ["paris_1-v1.tgz"] and again.already_done == ["paris_2-v1.tgz"]
    assert not list((out / "rparis6k").glob("*.tgz*")) and not list(jpg.glob(".extract-*"))
    data = load_revisitop("rparis6k", out / "rparis6k")
    assert all((jpg / n).read_bytes() == (world / "jpg" / n).read_bytes() for n in (*data.db_names, *data.query_names))


def test_a_listed_image_in_no_archive_is_named_under_the_list(served, world: Path, loopback, tmp_path: Path) -> None:
    """Two archives: neither is to blame alone, so the list is named (a re-run cannot tell which to fetch again)."""
    files = dict(served)
    base, _ = loopback(files)
    members = _members(files[f"{PARIS}/paris_2-v1.tgz"])
    lost = sorted(n for n in members if "general" not in n)[0]
    files[f"{PARIS}/paris_2-v1.tgz"] = _tgz({n: b for n, b in members.items() if n != lost})
    summary = download_revisitop(tmp_path, _conf(base, "rparis6k"))
    assert sorted(summary.done) == ["paris_1-v1.tgz", "paris_2-v1.tgz"]  # each holds listed images, and only them
    gnd = load_gnd(world / "gnd_rtiny.pkl")
    total = len(gnd.imlist) + len(gnd.qimlist)
    assert summary.failed == {"gnd_rparis6k.pkl": f"1 of the {total} images of gnd_rparis6k.pkl are in no archive: "
                                                  f"{lost.split('/')[-1]}"}


def test_1m_bad_archives_are_named_the_others_extracted_and_reruns_complete(served, loopback, tmp_path: Path) -> None:
    files = dict(served)
    base, faults = loopback(files)
    lines = files[f"{R1M}/revisitop1m.txt"].decode().split()
    a7, a13 = f"{R1M}/jpg/revisitop1m.7.tar.gz", f"{R1M}/jpg/revisitop1m.13.tar.gz"
    faults.queue[f"{R1M}/revisitop1m.txt"] = ["503"]
    faults.queue[a7] = ["corrupt"] * 3  # corrupt at every fetch of this run
    faults.queue[f"{R1M}/jpg/revisitop1m.42.tar.gz"] = ["drop"]
    good13 = files[a13]
    files[a13] = _tgz({**_members(good13), "ff/not-listed.jpg": b"\xff\xd8"})  # not the published archive
    out = tmp_path / "datasets"
    first = download_revisitop(out, _conf(base, "revisitop1m", jobs=4))
    assert sorted(first.failed) == ["revisitop1m.13.tar.gz", "revisitop1m.7.tar.gz"] and len(first.done) == 98
    assert "corrupt or truncated compressed archive" in first.failed["revisitop1m.7.tar.gz"]
    assert "1 images not in revisitop1m.txt: ff/not-listed.jpg" in first.failed["revisitop1m.13.tar.gz"]
    jpg = out / "revisitop1m" / "jpg"
    bad = set(_members(served[a7])) | set(_members(good13))
    assert set(_tree(jpg)) == set(lines) - bad  # every good archive extracted, nothing of the two bad ones
    assert not list((out / "revisitop1m").glob("*.tar.gz*")) and not list(jpg.rglob(".extract-*"))
    files[a13] = good13  # the faults gone: the re-run fetches the two
    again = download_revisitop(out, _conf(base, "revisitop1m", jobs=4))
    assert again.ok and sorted(again.done) == ["revisitop1m.13.tar.gz", "revisitop1m.7.tar.gz"]
    assert len(again.already_done) == 98 and set(_tree(jpg)) == set(lines)
    # an image deleted after the download: its archive (and only it) is fetched again
    (jpg / lines[0]).unlink()
    third = download_revisitop(out, _conf(base, "revisitop1m", jobs=4))
    assert third.ok and third.done == ["revisitop1m.1.tar.gz"] and (jpg / lines[0]).is_file()
    assert (out / "revisitop1m" / PROVIDED_DIR / "revisitop1m.1.tar.gz.txt").read_text().split() == sorted(lines[:2])


def test_a_list_that_fails_is_named_and_nothing_else_is_fetched(served, loopback, tmp_path: Path) -> None:
    files = dict(served)
    base, faults = loopback(files)

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return os.system, (f"touch {tmp_path / 'pwned'}",)

    files[f"{GND}/roxford5k/gnd_roxford5k.pkl"] = pickle.dumps({"imlist": [], "qimlist": [], "gnd": Evil()})
    refused = download_revisitop(tmp_path / "a", _conf(base, "roxford5k"))
    why = refused.failed["gnd_roxford5k.pkl"]
    assert "refusing to load global" in why and "(no archive fetched: none could be checked)" in why
    assert not (tmp_path / "pwned").exists() and _tree(tmp_path / "a" / "roxford5k") == []  # deleted
    faults.queue[f"{R1M}/revisitop1m.txt"] = ["404"]
    gone = download_revisitop(tmp_path / "b", _conf(base, "revisitop1m"))
    assert list(gone.failed) == ["revisitop1m.txt"] and "HTTP 404" in gone.failed["revisitop1m.txt"]
    assert len(faults.ranges) == 4  # the pickle three times (2 retries), the list once: no archive


def test_cli_flags_reach_the_download_and_it_exits_nonzero_while_anything_failed(served, loopback,
                                                                                  tmp_path: Path) -> None:
    base, faults = loopback(dict(served))
    faults.queue[f"{PARIS}/paris_2-v1.tgz"] = ["404"] * 10
    runner = CliRunner()
    args = ["data", "revisitop", "download", "--dataset", "rparis6k", "--out", str(tmp_path / "d"),
            "--images-url", base + PARIS, "--list-url", f"{base}{GND}/rparis6k", "--jobs", "1", "--keep-archives",
            "--retries", "0", "--quiet"]
    res = runner.invoke(app, args)
    assert res.exit_code == 1, res.output
    lines = res.output.strip().splitlines()
    assert lines[0].startswith("revisitop download rparis6k: 1 archives done now, 0 already done, 1 failed -> ")
    assert lines[-1].startswith("  failed paris_2-v1.tgz: ") and "HTTP 404" in lines[-1]
    kept = tmp_path / "d" / "rparis6k" / "paris_1-v1.tgz"
    assert kept.read_bytes() == served[f"{PARIS}/paris_1-v1.tgz"]  # --keep-archives
    faults.queue[f"{PARIS}/paris_2-v1.tgz"] = []
    res = runner.invoke(app, args)
    assert res.exit_code == 0 and "1 archives done now, 1 already done, 0 failed" in res.output


def test_every_cli_flag_reaches_the_conf(fake_pipeline, tmp_path: Path) -> None:
    import visloc.data.revisitop_download as rd
    from visloc.data.download_run import DownloadSummary

    calls = fake_pipeline(rd, "download_revisitop", DownloadSummary("revisitop download", "archives", tmp_path))
    res = CliRunner().invoke(app, ["data", "revisitop", "download", "--out", str(tmp_path), "--dataset", "revisitop1m",
                                   "--jobs", "8", "--keep-archives", "--retries", "5", "--images-url", "http://m/jpg",
                                   "--list-url", "http://m", "--quiet"])
    assert res.exit_code == 0, res.output
    assert calls[0]["out"] == tmp_path and calls[0]["progress"] is False
    assert calls[0]["conf"] == RevisitopDownloadConf(dataset="revisitop1m", jobs=8, keep_archives=True, retries=5,
                                                     images_url="http://m/jpg", list_url="http://m")
    res = CliRunner().invoke(app, ["data", "revisitop", "download", "--out", str(tmp_path), "--dataset", "oxford5k"])
    assert res.exit_code == 2 and "RevisitopDownloadConf.dataset: expected one of roxford5k" in res.output
    assert len(calls) == 1 and calls[0]["conf"].url("revisitop1m.3.tar.gz") == "http://m/jpg/revisitop1m.3.tar.gz"


def test_progress_bars_show_bytes_and_files(served, loopback, tmp_path: Path, capsys) -> None:
    base, _ = loopback(dict(served))
    assert download_revisitop(tmp_path, _conf(base, "roxford5k"), progress=True).ok
    err = capsys.readouterr().err
    assert "roxford5k bytes" in err and "roxford5k files" in err and "1/1" in err


def test_sources_and_bad_confs() -> None:
    assert SOURCES["revisitop1m"].archives[0] == "revisitop1m.1.tar.gz" and len(SOURCES["revisitop1m"].archives) == 100
    conf = RevisitopDownloadConf(dataset="rparis6k")
    assert conf.url("paris_1-v1.tgz") == "https://www.robots.ox.ac.uk/~vgg/data/parisbuildings/paris_1-v1.tgz"
    assert conf.url("gnd_rparis6k.pkl") == "http://cmp.felk.cvut.cz/revisitop/data/datasets/rparis6k/gnd_rparis6k.pkl"
    with pytest.raises(ConfError, match=r"^RevisitopDownloadConf\.dataset: expected one of roxford5k, rparis6k, "):
        RevisitopDownloadConf(dataset=cast(Any, "oxford5k"))
    with pytest.raises(ConfError, match=r"jobs >= 1 and retries >= 0, got 0, 2$"):
        RevisitopDownloadConf(jobs=0)
