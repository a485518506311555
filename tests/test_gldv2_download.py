"""``visloc data gldv2 download`` against a loopback server serving a miniature GLDv2 (the world's ``landmarks``
generator, packed into tars with md5 files, in GLDv2's URL layout), with faults injected."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from visloc.cli import app
from visloc.conf import ConfError
from visloc.data.gldv2_download import STATE_FILE, Gldv2DownloadConf, download_gldv2, parse_tar_range
from visloc.data.scene.city_conf import CityConf
from visloc.data.world import gldv2_layout as gl
from visloc.data.world.landmarks import LandmarksConf, generate_landmarks
from visloc.io.download import DownloadConf

CITY = CityConf(num_streets_x=2, num_streets_y=4, block_length_m=40.0, block_depth_m=30.0, width=96, height=72,
                focal=75.0, split=(0.34, 0.33, 0.33), px_per_m=8.0, ground_px_per_m=4.0)
HTTP = DownloadConf(timeout_s=2.0, retries=2, backoff_s=0.0, chunk_bytes=1024)


@pytest.fixture(scope="module")
def mini_gldv2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    conf = LandmarksConf(city=CITY, views_per_landmark=2, min_views=1, pack=True, tar_size=3)
    return generate_landmarks(conf, tmp_path_factory.mktemp("gldv2"), split="train", progress=False).root


def _served(root: Path, evil: bool = False) -> dict[str, bytes]:
    files = {f"/metadata/{n}": (root / n).read_bytes() for n in (gl.TRAIN_CSV, gl.TRAIN_CLEAN_CSV)}
    for tar in sorted(root.glob("images_*.tar")):
        i = int(tar.stem.split("_")[1])
        files[f"/train/{tar.name}"] = tar.read_bytes()
        files[f"/md5sum/train/{gl.md5_name(i)}"] = (root / gl.md5_name(i)).read_bytes()
    if evil:  # tar 2 holds a ../ member (with a correct md5: the server's own)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tf:
            info = tarfile.TarInfo("../evil.jpg")
            info.size = 4
            tf.addfile(info, io.BytesIO(b"evil"))
        files["/train/images_002.tar"] = buf.getvalue()
        digest = hashlib.md5(buf.getvalue()).hexdigest()
        files["/md5sum/train/md5.images_002.txt"] = f"{digest}  images_002.tar\n".encode()
    return files


def test_faults_are_named_good_tars_extracted_and_a_rerun_completes(mini_gldv2: Path, loopback, tmp_path) -> None:
    tars = sorted(mini_gldv2.glob("images_*.tar"))
    assert len(tars) >= 4
    base, faults = loopback(_served(mini_gldv2, evil=True))
    faults.queue["/train/images_000.tar"] = ["corrupt"]  # md5 mismatch once: fetched again
    faults.queue["/train/images_001.tar"] = ["404"] * 10  # gone for this run
    faults.queue["/train/images_003.tar"] = ["drop", "503"]  # resumed, retried
    conf = Gldv2DownloadConf(tars=tuple(range(len(tars))), base_url=base, jobs=2, http=HTTP)
    out = tmp_path / "gldv2"
    summary = download_gldv2(out, conf)
    assert not summary.ok and sorted(summary.failed) == ["images_001.tar", "images_002.tar"]
    assert "HTTP 404" in summary.failed["images_001.tar"]
    assert "member '../evil.jpg' is not a GLDv2 image" in summary.failed["images_002.tar"]
    assert not (out / "evil.jpg").exists()  # the refused tar is kept for inspection, the extracted ones removed
    assert [t.name for t in (out / "train").glob("images_*.tar*")] == ["images_002.tar"]
    state = json.loads((out / "train" / STATE_FILE).read_text())["tars"]
    assert state["images_000.tar"] == {"status": "extracted"} and state["images_001.tar"]["status"] == "failed"
    faults.queue["/train/images_001.tar"] = []  # the fault is gone; tar 2 is still refused
    again = download_gldv2(out, conf)
    assert sorted(again.done) == ["images_001.tar"] and sorted(again.failed) == ["images_002.tar"]
    assert len(again.already_done) == len(tars) - 2
    # every image of the good tars, byte-identical to the generator's, under DELF's layout
    (out / "train" / "images_002.tar").unlink()  # the reader refuses it too
    train = gl.Gldv2Train.open(out / "train", verify=False)
    good = [t for t in tars if t.name != "images_002.tar"]
    for tar in good:
        with tarfile.open(tar) as tf:
            for m in tf.getmembers():
                data = tf.extractfile(m)
                assert data is not None and (out / "train" / m.name).read_bytes() == data.read()
    assert (out / "train" / gl.TRAIN_CSV).read_bytes() == (mini_gldv2 / gl.TRAIN_CSV).read_bytes()
    assert train.rows and train.clean


def test_cli_downloads_keeps_tars_and_exits_nonzero_on_failures(mini_gldv2: Path, loopback, tmp_path) -> None:
    base, faults = loopback(_served(mini_gldv2))
    faults.queue["/train/images_001.tar"] = ["404"] * 10
    runner = CliRunner()
    args = ["data", "gldv2", "download", "--out", str(tmp_path / "g"), "--tars", "0-1", "--base-url", base,
            "--keep-tars", "--jobs", "1", "--quiet"]
    res = runner.invoke(app, args)
    assert res.exit_code == 1, res.output
    lines = res.output.strip().splitlines()
    assert lines[0].startswith("gldv2 download: 1 tars done now, 0 already done, 1 failed -> ")
    assert lines[1].startswith("  failed images_001.tar: ") and "HTTP 404" in lines[1]
    assert (tmp_path / "g" / "train" / "images_000.tar").read_bytes() == (mini_gldv2 / "images_000.tar").read_bytes()
    faults.queue["/train/images_001.tar"] = []
    res = runner.invoke(app, args)
    assert res.exit_code == 0 and "1 tars done now, 1 already done, 0 failed" in res.output


def test_tar_ranges_and_bad_confs() -> None:
    assert parse_tar_range("0-2,7") == (0, 1, 2, 7)
    with pytest.raises(ConfError, match=r"^--tars: expected ranges like 0-499"):
        parse_tar_range("5-2")
    with pytest.raises(ConfError, match=r"^Gldv2DownloadConf.tars: test has tars 0-19, got 20$"):
        Gldv2DownloadConf(split="test", tars=(20,))


def test_progress_bars_show_bytes_and_tars(mini_gldv2: Path, loopback, tmp_path, capsys) -> None:
    tars = sorted(mini_gldv2.glob("images_*.tar"))
    base, _ = loopback(_served(mini_gldv2))
    conf = Gldv2DownloadConf(tars=tuple(range(len(tars))), base_url=base, jobs=2, http=HTTP)
    assert download_gldv2(tmp_path / "gldv2", conf, progress=True).ok
    err = capsys.readouterr().err
    assert "gldv2 train bytes" in err and f"{len(tars)}/{len(tars)}" in err
