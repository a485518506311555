"""The Coarse LoFTR benchmarks: ``bench_loftr.py --quick`` and ``loftr_eval.py --quick`` print the README tables.

Both run on random networks (no trained student needed): the numbers are checked for shape and finiteness, not
for value. The world ground truth of ``loftr_eval`` is checked on constructed matches of a generated pair.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from test_benchmarks import BENCH, run_quick, table_with

from visloc.data.world.pairs import PairsConf, generate_pairs
from visloc.data.world.pairs_files import read_info, read_pair
from visloc.data.world.pairs_gt import correspondences, grid_points


def _load(name: str) -> ModuleType:
    """A script of benchmarks/ as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


loftr_eval = _load("loftr_eval")


@pytest.fixture(scope="module")
def world_pairs(tmp_path_factory) -> Path:
    """Three test-split pairs of the world, one per bin (balanced bins: pair i has level i % 3)."""
    out = tmp_path_factory.mktemp("pairs")
    generate_pairs(PairsConf(num_pairs=3), out, split="test", progress=False)
    return out


def _number(cell: str) -> float:
    return float(cell.replace(",", ""))


def test_bench_loftr_quick(tmp_path):
    out = tmp_path / "bench.json"
    text = run_quick("bench_loftr.py", tmp_path, "--out", str(out))
    rows = table_with(text, "x LoFTR")
    assert [(r["method"], r["runtime"], r["part"]) for r in rows] == [
        ("loftr", "torch", "matcher"), ("aliked-n16+lightglue", "torch", "matcher"),
        ("loftr-coarse", "torch", "matcher"), ("loftr-coarse", "torch", "graph"),
        ("loftr-coarse-onnx", "onnxruntime", "matcher"), ("loftr-coarse-onnx", "onnxruntime", "graph")]
    assert all(r["size"] == "160x128" for r in rows)
    for r in rows:
        values = [_number(r[c]) for c in ("median ms", "pairs/s", "x LoFTR", "peak RSS MB", "matching +MB")]
        assert all(math.isfinite(v) for v in values) and values[0] > 0 and values[3] > 100, r
        assert _number(r["pairs/s"]) == pytest.approx(1000 / _number(r["median ms"]), rel=0.02, abs=0.01)
    assert rows[0]["x LoFTR"] == "1.0"
    data = json.loads(out.read_text())
    assert len(data["results"]) == 6 and data["goals"] == {}  # no 640x480 run: no goal lines
    assert {r["peak_method"] for r in data["results"]} == {"hwm-reset"}


def test_world_match_errors_on_constructed_matches(world_pairs):
    info = read_info(world_pairs / "pairs_info.csv")
    view0, view1 = read_pair(world_pairs, info[0].name0, info[0].name1)
    k0 = grid_points(view0.size, 16)
    uv1, valid = correspondences(k0, view0, view1)
    k0, k1 = k0[valid], uv1[valid]
    assert len(k0) > 100
    shift = np.array([5.0, 0.0])
    err = loftr_eval.match_errors(k0, k1 + shift, view0, view1)
    np.testing.assert_allclose(err, 5.0, atol=1e-9)
    assert loftr_eval.metrics.match_precision(err, 8.0) == 1.0 and loftr_eval.metrics.match_precision(err, 3.0) == 0.0
    # a point of image 0 that is not co-visible is a wrong match (inf), one on the sky has no ground truth (NaN)
    grid = grid_points(view0.size, 16)
    uv1, valid = correspondences(grid, view0, view1)
    hidden = grid[~valid & np.isfinite(uv1[:, 0])]
    sky = np.argwhere(view0.depth == 0)[:, ::-1].astype(np.float64)
    assert len(hidden) and len(sky)
    labelled = loftr_eval.match_errors(np.stack([sky[0], hidden[0]]), np.zeros((2, 2)), view0, view1)
    assert np.isnan(labelled[0]) and np.isinf(labelled[1])


def test_select_pairs_spreads_over_bins(world_pairs):
    rows = read_info(world_pairs / "pairs_info.csv")
    more = rows + [replace(r, name0=r.name0 + "x") for r in rows]
    picked = loftr_eval.select_pairs(more, 4)
    assert [r.bin for r in picked] == ["easy", "medium", "hard", "easy"]
    assert picked[3].name0.endswith("x")
    assert loftr_eval.select_pairs(rows, None) == rows and loftr_eval.select_pairs(rows, 10) == rows


def test_loftr_eval_quick(tmp_path, world_pairs):
    out = tmp_path / "out"
    text = run_quick("loftr_eval.py", tmp_path, "--pairs-dir", str(world_pairs), "--out", str(out))
    rows = table_with(text, "Castle AUC@5/10/20")
    assert [r["method"] for r in rows] == ["loftr-coarse (torch)", "loftr-coarse-onnx (onnxruntime)",
                                           "aliked-n16+lightglue (detector-pair)", "sift+nn-ratio"]
    assert list(rows[0]) == ["method", "ms/pair", "Castle AUC@5/10/20", "graf corner px", "graf < 5 px",
                             "easy AUC@5/10/20", "easy P@8/3px", "medium AUC@5/10/20", "medium P@8/3px",
                             "hard AUC@5/10/20", "hard P@8/3px", "matches"]
    for r in rows:
        aucs = [float(v) for c in r if "AUC" in c for v in r[c].split(" / ")]
        assert len(aucs) == 12 and all(0 <= v <= 1 for v in aucs), r
        precisions = [float(v) for c in r if "P@" in c for v in r[c].split(" / ")]
        assert len(precisions) == 6 and all(0 <= v <= 1 for v in precisions), r  # every pair has matches
        assert float(r["ms/pair"]) > 0 and float(r["matches"]) > 0
        graf = float(r["graf corner px"])  # nan when no homography is found (a random network's few matches)
        assert r["graf < 5 px"] == ("yes" if graf < 5 else "no")
        assert math.isfinite(graf) or r["method"].startswith("loftr-coarse"), r
    data = json.loads((out / "loftr_eval.json").read_text())
    assert data["pairs"] == 3 and data["bins"] == {"easy": 1, "medium": 1, "hard": 1}
    assert (out / "loftr_eval.md").read_text().strip().endswith(text.strip().splitlines()[-1])


def test_loftr_eval_row_groups():
    names = [n for n, _ in loftr_eval.selected_methods(["xfeat", "default"], None, "s", 640, None)]
    assert names == ["xfeat+nn-mutual", "xfeat+lighterglue", "xfeat-star", "loftr-coarse (torch)",
                     "loftr-coarse-onnx (onnxruntime)", "aliked-n16+lightglue (detector-pair)", "sift+nn-ratio"]
    xfeat = dict(loftr_eval.xfeat_methods(640))
    assert xfeat["xfeat-star"].extractor is None and xfeat["xfeat-star"].image_matcher
    assert [xfeat[n].extractor for n in ("xfeat+nn-mutual", "xfeat+lighterglue")] == ["xfeat", "xfeat"]
    for bad in ([], ["xfeat", "xfeat"], ["alike"]):
        with pytest.raises(ValueError, match="distinct groups"):
            loftr_eval.selected_methods(bad, None, "s", 640, None)


def test_loftr_eval_quick_xfeat_rows(tmp_path, world_pairs):
    out = tmp_path / "out"
    text = run_quick("loftr_eval.py", tmp_path, "--pairs-dir", str(world_pairs), "--out", str(out), "--rows", "xfeat")
    rows = table_with(text, "Castle AUC@5/10/20")
    assert [r["method"] for r in rows] == ["xfeat+nn-mutual", "xfeat+lighterglue", "xfeat-star"]
    for r in rows:
        assert float(r["matches"]) > 0 and math.isfinite(float(r["graf corner px"])), r
    assert "no loftr-coarse row" in text
