"""Every benchmark script runs its whole code path with ``--quick`` and prints the table it promises.

Each script runs in a subprocess (``sys.executable``, ``PYTHONPATH`` = this checkout's ``src``), in a
temporary working directory with a temporary ``VISLOC_CACHE``, so a rename in ``visloc`` that
breaks a script (and the README numbers it produces) fails here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


def run_quick(script: str, tmp_path: Path, *args: str, timeout: float = 600) -> str:
    """Run ``benchmarks/SCRIPT --quick ARGS`` and return its stdout (fails with its stderr's tail)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "VISLOC_CACHE": str(tmp_path / "user-cache")}
    proc = subprocess.run([sys.executable, str(BENCH / script), "--quick", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"{script} --quick exited {proc.returncode}:\n{proc.stderr[-4000:]}"
    assert not (tmp_path / "outputs").exists(), f"{script} --quick wrote outputs/ in the working directory"
    return proc.stdout


def tables(text: str) -> list[list[dict[str, str]]]:
    """Every Markdown table in ``text``: a list of rows, each ``{header: cell}`` (a repeated header gets ``#2``)."""
    lines = text.splitlines()
    out = []
    for i in range(len(lines) - 1):
        if lines[i].startswith("|") and lines[i + 1].startswith("|---"):
            head: list[str] = []
            for c in (c.strip() for c in lines[i].strip().strip("|").split("|")):
                head.append(c if c not in head else f"{c}#{head.count(c) + 1}")
            rows = []
            for line in lines[i + 2:]:
                if not line.startswith("|"):
                    break
                rows.append(dict(zip(head, (c.strip() for c in line.strip().strip("|").split("|")), strict=True)))
            out.append(rows)
    return out


def table_with(text: str, column: str) -> list[dict[str, str]]:
    """The first table of ``text`` that has ``column``."""
    found = [t for t in tables(text) if t and column in t[0]]
    assert found, f"no table with a {column!r} column in:\n{text[-3000:]}"
    return found[0]


def test_tables_parser_reads_a_markdown_table():
    text = "title\n| a | b | a |\n|---|---|---|\n| x | 1.5 | 2 |\n| y |  | 3 |\n\nafter"
    assert tables(text) == [[{"a": "x", "b": "1.5", "a#2": "2"}, {"a": "y", "b": "", "a#2": "3"}]]


def test_bench_scene_quick(tmp_path):
    rows = table_with(run_quick("bench_scene.py", tmp_path), "cpu fps")
    views = [("street", "db trajectory"), ("street", "smooth walk"), ("city", "along streets"), ("city", "any heading")]
    sizes = ("640x480", "346x260")
    assert [(r["world"], r["views"], r["size"]) for r in rows] == [v + (s,) for v in views for s in sizes]
    assert all(r["threads"] == "1" and float(r["fps"]) > 0 and float(r["cpu fps"]) > 0 for r in rows)
    assert all(int(r["kept"]) > 0 for r in rows)


def test_bench_faiss_quick(tmp_path):
    out = tmp_path / "faiss.json"
    rows = table_with(run_quick("bench_faiss.py", tmp_path, "--out", str(out)), "recall@10")
    assert [r["kind"] for r in rows] == ["flat", "ivfpq", "ivfpq-cold", "ivfpq-norefine", "hnsw"]
    assert all(r["n"] == "4000" and r["d"] == "32" for r in rows)
    assert rows[0]["recall@10"] == "1.000"  # flat is the exact reference
    assert rows[1]["recall@10"] == rows[2]["recall@10"]  # the same search, its vectors read from disk
    assert float(rows[1]["recall@10"]) > float(rows[3]["recall@10"])  # the refine stage (measured 0.78 > 0.62)
    assert float(rows[1]["disk B/vec"]) > float(rows[1]["RAM B/vec"]) == float(rows[3]["disk B/vec"])
    assert float(rows[4]["recall@10"]) >= 0.9  # HNSW on 4,000 clustered vectors (measured 0.99)
    data = json.loads(out.read_text())
    assert [r["kind"] for r in data] == ["flat", "ivfpq", "ivfpq-cold", "ivfpq-norefine", "hnsw"]


def test_train_log_summary_quick(tmp_path):
    rows = table_with(run_quick("train_log_summary.py", tmp_path), "first steps")
    by_tag = {r["scalar"]: r for r in rows}
    assert set(by_tag) == {"loss/total", "lr"}
    # the synthetic loss is 1 - 0.02 step over steps 0..49: means over 0-9 and 40-49
    assert by_tag["loss/total"]["first steps"] == "0-9" and by_tag["loss/total"]["last steps"] == "40-49"
    assert by_tag["loss/total"]["mean"] == "0.9100" and by_tag["loss/total"]["mean#2"] == "0.1100"
    assert by_tag["lr"]["mean"] == "0.0010" == by_tag["lr"]["mean#2"]


@pytest.mark.slow
def test_bench_demo_quick(tmp_path):
    text = run_quick("bench_demo.py", tmp_path)
    rows = table_with(text, "wall s")
    assert rows[0]["stage"] == "render" and rows[-1]["stage"].startswith("**whole demo**")
    assert all(float(r["wall s"]) >= 0 for r in rows)
    recall = table_with(text, "condition")
    assert {r["condition"] for r in recall} == {"day", "night", "fog", "blur", "all"}


def test_bench_batch_quick(tmp_path):
    rows = table_with(run_quick("bench_batch.py", tmp_path), "B=1 img/s")
    assert [r["extractor"] for r in rows] == ["xfeat"] and float(rows[0]["B=2 img/s"]) > 0


def test_bench_match_many_quick(tmp_path):
    rows = table_with(run_quick("bench_match_many.py", tmp_path), "one call ms")
    assert [r["features + matcher"] for r in rows] == ["hfnet + nn-mutual", "sift + nn-ratio"]
    assert all(float(r["pair by pair ms"]) > 0 and int(r["query keypoints"]) > 50 for r in rows)


@pytest.mark.slow
def test_bench_speed_quick(tmp_path):
    out = tmp_path / "bench.json"
    rows = table_with(run_quick("bench_speed.py", tmp_path, "--out", str(out)), "median ms")
    assert [(r["kind"], r["name"]) for r in rows] == [("extract", "sift"), ("match", "nn-ratio (sift)"),
                                                      ("match", "lightglue (aliked-n16)"), ("pair", "xfeat-star")]
    assert all(float(r["median ms"]) > 0 and int(r["keypoints"]) > 50 for r in rows)
    assert all(int(r["matches"]) > 20 for r in rows[1:])  # a real homography pair
    assert len(json.loads(out.read_text())["results"]) == 4


@pytest.mark.slow
def test_bench_hfnet_quick(tmp_path):
    out = tmp_path / "hfnet.json"
    text = run_quick("bench_hfnet.py", tmp_path, "--out", str(out))
    names = [r["name"] for r in table_with(text, "median ms")]
    assert names == ["hfnet (torch eager)", "hfnet-onnx (onnxruntime)", "MobileNetV2-0.75 features[:18] (ort)",
                     "HF-Net forward (torch-fused)", "aliked-n16 (visloc sparse)", "aliked-n16 (kornia forward)"]
    assert sum("target 1/" in line for line in text.splitlines()) == 4
    assert len(json.loads(out.read_text())["ratios"]) == 4


@pytest.mark.slow
def test_bench_delg_quick(tmp_path):
    out = tmp_path / "delg.json"
    rows = table_with(run_quick("bench_delg.py", tmp_path, "--out", str(out)), "median ms")
    assert [r["name"] for r in rows] == ["delg R18 (torch)", "delg R18 (onnxruntime)"]
    assert all(float(r["median ms"]) > 0 and float(r["peak RSS MB"]) > 100 for r in rows)
    assert rows[0]["keypoints"] == rows[1]["keypoints"] and int(rows[0]["keypoints"]) > 100  # the same selection
    report = json.loads(out.read_text())
    assert report["official_p100_ms"] == 211.0 and len(report["results"]) == 2


def _metrics(report: dict) -> dict:
    return {k: v for k, v in report["summary"].items() if not k.startswith("mean_time")}


@pytest.mark.slow
def test_eval_all_quick_writes_reports_and_generates_the_table(tmp_path):
    out = tmp_path / "results"
    text = run_quick("eval_all.py", tmp_path, "--out", str(out))
    rows = table_with(text, "mean_epe_median")
    assert [r["method"] for r in rows] == ["aliked-n16+lightglue", "sift+nn-ratio", "detector-pair"]
    assert all(float(r["mean_num_matches"]) > 50 for r in rows)
    assert "### Stereo: Middlebury motorcycle" in text
    # the table is generated from the JSON reports: --tables-only rebuilds the same file from them
    generated = (out / "results.md").read_text()
    assert generated.strip() in text
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, str(BENCH / "eval_all.py"), "--quick", "--tables-only", "--out", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "results.md").read_text() == generated

    reports = {p.stem: json.loads(p.read_text()) for p in (out / "motorcycle").glob("*.json")}
    assert set(reports) == {"aliked-n16+lightglue", "sift+nn-ratio", "detector-pair"}
    # detector-pair's defaults (ALIKED-n16 + LightGlue) reproduce the feature pipeline's row
    pair, feats = reports["detector-pair"], reports["aliked-n16+lightglue"]
    assert _metrics(pair) == pytest.approx(_metrics(feats), rel=1e-3)
    for r in reports.values():  # provenance: what produced the numbers, and which cached predictions
        assert r["dataset_key"] == "motorcycle" and r["resize_max"] == 320
        assert r["provenance"]["visloc"] and r["provenance"]["resize_max"] == 320
        assert sorted(r["weights"].values()) == r["provenance"]["weights"]
        assert (out / "cache" / "predictions" / "motorcycle" / f"{r['method']}-{r['cache_key']}.h5").is_file()
    assert len(pair["weights"]) == 2 and pair["weights"] == feats["weights"]  # ALIKED-n16 + its LightGlue
    assert reports["sift+nn-ratio"]["weights"] == {}


@pytest.mark.slow
def test_hfnet_student_quick(tmp_path):
    rows = table_with(run_quick("hfnet_student.py", tmp_path), "mean_epe_median")
    assert [r["method"] for r in rows] == ["hfnet+nn-mutual", "hfnet+nn-ratio", "aliked-n16+nn-mutual",
                                           "aliked-n16+lightglue"]
    assert all(float(r["mean_num_matches"]) > 50 for r in rows)


@pytest.mark.slow
def test_hfnet_student_quick_compares_several_students(tmp_path):
    shipped = ROOT / "src" / "visloc" / "weights" / "hfnet_default.pt"
    text = run_quick("hfnet_student.py", tmp_path, "--weights", "default", "--weights", f"copy={shipped}")
    rows = {r["method"]: r for r in table_with(text, "mean_epe_median")}
    assert list(rows) == ["hfnet+nn-mutual", "hfnet+nn-ratio", "hfnet-copy+nn-mutual", "hfnet-copy+nn-ratio",
                          "aliked-n16+nn-mutual", "aliked-n16+lightglue"]
    # the same weights by path and as the shipped default: the same numbers
    assert rows["hfnet-copy+nn-mutual"]["mean_epe_median"] == rows["hfnet+nn-mutual"]["mean_epe_median"]


@pytest.mark.slow
def test_hfnet_world_pairs_quick(tmp_path):
    rows = table_with(run_quick("hfnet_world_pairs.py", tmp_path), "precision@3px")
    assert [(r["suite"], r["method"]) for r in rows] == [
        (s, m) for s in ("day", "cond") for m in ("hfnet+nn-mutual", "aliked-n16+nn-mutual")]
    # measured: the teacher 0.88 / 0.87 precision, 36 / 32 correct matches on the two 160x120 pairs
    teacher = [r for r in rows if r["method"] == "aliked-n16+nn-mutual"]
    assert all(float(r["precision@3px"]) > 0.6 and float(r["correct@3px"]) >= 15 for r in teacher)


@pytest.mark.slow
def test_retrieval_quality_quick(tmp_path):
    out = tmp_path / "rq.json"
    rows = table_with(run_quick("retrieval_quality.py", tmp_path, "--out", str(out)), "E mAP")
    assert [r["method"] for r in rows] == ["VLAD-ALIKED K=8", "+ re-rank top 3 (nn-mutual, homography)"]
    assert all(0 <= float(v) <= 100 for r in rows for k, v in r.items() if k != "method")
    assert float(rows[0]["E mAP"]) >= 50  # measured 84.0: easy positives of 6 queries among 24 images
    data = json.loads(out.read_text())
    assert data["num_queries"] == 6 and data["num_database"] == 24


@pytest.mark.slow
def test_localize_castle_quick(tmp_path):
    from visloc.data.castle import CASTLE_ROOT

    if not CASTLE_ROOT.is_dir():
        pytest.skip(f"{CASTLE_ROOT} missing (apt-get install visp-images-data)")
    out = tmp_path / "castle.json"
    text = run_quick("localize_castle.py", tmp_path, "--out", str(out))
    rows = table_with(text, "failed")
    assert [r["method"] for r in rows] == ["vlad-aliked + lightglue"]
    assert int(rows[0]["failed"]) == 0 and float(rows[0]["50 mm, 10 deg"]) == 100.0  # measured: 2/2 within 2.5 mm
    times = table_with(text, "map points")
    assert list(times[0]) == ["method", "global ms / query", "local ms / query", "matching ms / query",
                              "pnp ms / query", "map images", "map points", "map s"]
    assert times[0]["map images"] == "5"
    data = json.loads(out.read_text())
    assert data["queries"] == 2 and len(data["rows"]) == 1
    assert data["rows"][0]["map"]["images"] == 5 and data["rows"][0]["failed"] == []
    assert data["rows"][0]["retrieval"] == "vlad-aliked"


def test_localize_castle_quick_xfeat_rows(tmp_path):
    """``--rows``: several methods in one run, XFeat retrieving with its own VLAD or with ALIKED's."""
    from visloc.data.castle import CASTLE_ROOT

    if not CASTLE_ROOT.is_dir():
        pytest.skip(f"{CASTLE_ROOT} missing (apt-get install visp-images-data)")
    out = tmp_path / "castle.json"
    text = run_quick("localize_castle.py", tmp_path, "--out", str(out),
                     "--rows", "vlad-xfeat+lighterglue", "xfeat+lighterglue@vlad-aliked")
    rows = table_with(text, "failed")
    assert [r["method"] for r in rows] == ["vlad-xfeat + lighterglue", "xfeat + lighterglue (vlad-aliked retrieval)"]
    assert all(int(r["failed"]) == 0 for r in rows)
    data = json.loads(out.read_text())
    assert [r["retrieval"] for r in data["rows"]] == ["vlad-xfeat", "vlad-aliked"]
    assert all(r["map"]["images"] == 5 for r in data["rows"])


def test_localize_castle_rows_parse():
    import importlib.util

    spec = importlib.util.spec_from_file_location("visloc_benchmarks_localize_castle", BENCH / "localize_castle.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    assert module.Row.parse("xfeat+lighterglue@vlad-aliked") == module.Row("xfeat", "lighterglue", "vlad-aliked")
    assert module.Row.parse("vlad-aliked+lightglue") == module.Row("vlad-aliked", "lightglue", "vlad-aliked")
    for bad in ("xfeat", "xfeat+", "+lightglue", "xfeat+lighterglue@", "a+b+c"):
        with pytest.raises(ValueError, match="EXTRACTOR"):
            module.Row.parse(bad)


def _bench_config():
    """``benchmarks/bench_config.py`` as a module (benchmarks/ is not a package)."""
    import importlib.util

    name = "visloc_benchmarks_bench_config"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, BENCH / "bench_config.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses resolve annotations through sys.modules
        spec.loader.exec_module(module)
    return sys.modules[name]


def test_two_view_config_rows():
    bc = _bench_config()
    conf = bc.load_benchmark()
    names = [m.name for m in conf.methods]
    assert names[:4] == ["aliked-n16+lightglue", "disk+lightglue", "sift+nn-ratio", "rootsift+nn-ratio"]
    assert names[-1] == "detector-pair" and len(names) == 15
    assert names[-5:-1] == ["xfeat+nn-mutual", "xfeat+lighterglue", "xfeat-1024+lighterglue", "xfeat-star"]
    assert [s.name for s in conf.suites] == ["castle-step5", "motorcycle", "graf", "synthetic"]
    pair = conf.methods[-1].method()
    assert pair.extractor is None and pair.image_matcher and pair.resize_max == 640
    quick = conf.quick_subset()
    assert [s.name for s in quick.suites] == ["motorcycle"]
    assert [m.name for m in quick.methods] == ["aliked-n16+lightglue", "sift+nn-ratio", "detector-pair"]
    assert {m.method().resize_max for m in quick.methods} == {320}


@pytest.mark.parametrize(("yaml_text", "message"), [
    ("suites: []\nmethods: [{extractor: sift, matcher: nn-ratio, ratio: 0.8}]\n", "unknown key(s) ['ratio']"),
    ("suites: [{name: a, protocol: depth}]\nmethods: []\n", "is not one of"),
    ("suites: []\nmethods: [{extractor: sift, matcher: nn-ratio}, {extractor: sift, matcher: nn-ratio}]\n",
     "repeated: ['sift+nn-ratio']"),
    ("suites: []\nmethods: []\nquick: {methods: [orb+nn-mutual]}\n",
     "quick.methods: unknown name(s) ['orb+nn-mutual']"),
    ("suites: [{name: h, protocol: homography, dataset: hpatches}]\nmethods: []\n", "synthetic or graf"),
])
def test_benchmark_config_errors_name_the_file_and_key(tmp_path, yaml_text, message):
    from visloc.conf import ConfError

    path = tmp_path / "bench.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfError) as err:
        _bench_config().load_benchmark(path)
    assert message in str(err.value) and str(path) in str(err.value)


def test_benchmark_config_label_disambiguates_rows(tmp_path):
    path = tmp_path / "bench.yaml"
    path.write_text("suites: []\nmethods:\n  - {extractor: sift, matcher: nn-ratio}\n"
                    "  - {extractor: sift, matcher: nn-ratio, matcher_set: [ratio_threshold=0.9], label: sift-0.9}\n")
    conf = _bench_config().load_benchmark(path)
    assert [m.name for m in conf.methods] == ["sift+nn-ratio", "sift-0.9"]
    assert conf.methods[1].method().matcher_overrides == ("ratio_threshold=0.9",)


@pytest.mark.slow
def test_eval_all_runs_every_protocol_from_a_config(tmp_path):
    from visloc.data.castle import CASTLE_ROOT
    from visloc.data.homography import OPENCV_DATA

    for needed, package in ((CASTLE_ROOT, "visp-images-data"), (OPENCV_DATA / "graf1.png", "opencv-doc")):
        if not needed.exists():
            pytest.skip(f"{needed} missing (apt-get install {package})")
    config = tmp_path / "bench.yaml"  # one pair per real suite: Castle frames 39 apart, graf; 16 synthetic pairs
    config.write_text("suites:\n"
                      "  - {name: castle-step39, protocol: pose, step: 39, title: Castle}\n"
                      "  - {name: graf, protocol: homography, dataset: graf}\n"
                      "  - {name: synthetic, protocol: homography, dataset: synthetic}\n"
                      "methods: [{extractor: sift, matcher: nn-ratio}]\n")
    out = tmp_path / "results"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, str(BENCH / "eval_all.py"), "--config", str(config), "--out", str(out),
                           "--cache", str(tmp_path / "cache")], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    found = tables(proc.stdout)
    assert [list(t[0])[:2] for t in found] == [["method", "auc@5.0"], ["method", "auc@1.0"], ["method", "auc@1.0"]]
    assert all(t[0]["method"] == "sift+nn-ratio" for t in found)
    assert "### Castle" in proc.stdout and "### graf" in proc.stdout
    reports = {s: json.loads((out / s / "sift+nn-ratio.json").read_text()) for s in ("castle-step39", "graf",
                                                                                    "synthetic")}
    assert [r["dataset_key"] for r in reports.values()] == ["castle-step39", "graf", "synthetic-seed0"]
    assert reports["castle-step39"]["summary"]["num_pairs"] == 1 and reports["synthetic"]["summary"]["num_pairs"] == 16
    assert float(found[2][0]["auc@5.0"]) > 0.5  # SIFT on the synthetic pairs (README: 0.832 at 640 px)
