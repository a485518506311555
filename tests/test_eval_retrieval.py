"""Exact values of the retrieval (revisitop) and place recognition metrics, the gnd reader, the CLI."""

from __future__ import annotations

import json
import os
import pickle
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from visloc.cli import app
from visloc.data.errors import DatasetError
from visloc.eval import place_recognition as pr
from visloc.eval.oxford_paris import load_gnd
from visloc.eval.retrieval import (
    check_ranks,
    classic_gnd,
    compute_ap,
    compute_map,
    evaluate_classic,
    evaluate_revisited,
    format_report,
    ranks_from_scores,
    report_json,
    revisited_gnd,
)
from visloc.retrieval import recall as rr


def column(*indices: int) -> np.ndarray:
    """Ranks [db, 1] of a single query."""
    return np.array(indices, dtype=np.int64)[:, None]


# --- compute_ap -------------------------------------------------------------------------------------

def test_compute_ap_trapezoid_by_hand():
    # positives at ranks 0, 2, 5 of 3; each adds (p_before + p_at) / 2 * 1/3:
    #   j=0, r=0: (1 + 1/1) / 6       = 1/3
    #   j=1, r=2: (1/2 + 2/3) / 6     = 7/36
    #   j=2, r=5: (2/5 + 3/6) / 6     = 3/20      -> 1/3 + 7/36 + 3/20 = 61/90
    assert compute_ap([0, 2, 5], 3) == pytest.approx(61 / 90, abs=1e-15)
    # a fourth positive never retrieved: the same trapezoids of width 1/4 -> 61/90 * 3/4 = 61/120
    assert compute_ap([0, 2, 5], 4) == pytest.approx(61 / 120, abs=1e-15)
    assert compute_ap([0, 1, 2], 3) == 1.0
    assert compute_ap([], 2) == 0.0


@pytest.mark.parametrize(("ranks", "nres"), [([0, 2], 1), ([2, 1], 2), ([1, 1], 2), ([0], 0), ([-1], 1)])
def test_compute_ap_rejects_bad_input(ranks, nres):
    with pytest.raises(ValueError):
        compute_ap(ranks, nres)


# --- compute_map: junk shift, skipped query, mP@k / mR@k ------------------------------------------------

def test_compute_map_junk_shift_and_skipped_query():
    ranks = np.stack([
        [3, 7, 1, 0, 5, 2, 6, 4],   # q0: positives 1, 5, 4 at positions 2, 4, 7; junk 7, 2 at 1, 5
        [0, 1, 2, 3, 4, 5, 6, 7],   # q1: no positive -> skipped
        [0, 1, 2, 3, 4, 5, 6, 7],   # q2: its single positive first
    ], axis=1)
    gnd = [{"ok": [1, 5, 4], "junk": [7, 2]}, {"ok": [], "junk": [0]}, {"ok": [0]}]
    res = compute_map(ranks, gnd, kappas=(1, 5, 10))
    # q0 after junk removal: positions 2-1, 4-1, 7-2 = 1, 3, 5 (0-based)
    #   AP = (0 + 1/2)/6 + (1/3 + 2/4)/6 + (2/5 + 3/6)/6 = 1/12 + 5/36 + 3/20 = 67/180
    #   1-based 2, 4, 6; P@k uses kq = min(6, k): P@1 = 0/1, P@5 = 2/5, P@10 = 3/6 (not 3/10)
    #   R@1 = 0/3, R@5 = 2/3, R@10 = 3/3
    assert res.aps[0] == pytest.approx(67 / 180, abs=1e-15)
    np.testing.assert_allclose(res.precisions[0], [0, 2 / 5, 1 / 2], rtol=0, atol=1e-15)
    np.testing.assert_allclose(res.recalls[0], [0, 2 / 3, 1], rtol=0, atol=1e-15)
    # q2: AP 1; kq = min(1, k) = 1 -> P@k = 1 for every k
    assert res.aps[2] == 1.0
    np.testing.assert_array_equal(res.precisions[2], [1, 1, 1])
    # q1 skipped: nan, out of the means, reported
    assert res.skipped == (1,)
    assert np.isnan(res.aps[1]) and np.all(np.isnan(res.precisions[1])) and np.all(np.isnan(res.recalls[1]))
    assert res.mean_ap == pytest.approx((67 / 180 + 1) / 2, abs=1e-15)  # 247/360
    np.testing.assert_allclose(res.mean_precision, [1 / 2, 7 / 10, 3 / 4], rtol=0, atol=1e-15)
    np.testing.assert_allclose(res.mean_recall, [1 / 2, 5 / 6, 1], rtol=0, atol=1e-15)


def test_compute_map_truncated_ranking_and_no_positive_retrieved():
    # short list of 2 of 6 images: q0 finds 1 of its 2 positives at rank 1 -> AP = (0 + 1/2)/2 * 1/2 = 1/8,
    # P@5 = 1/2 (kq = min(2, 5) = 2), R@5 = 1/2; q1 finds none -> 0 everywhere (revisitop would raise)
    ranks = np.array([[4, 3], [1, 2]])
    res = compute_map(ranks, [{"ok": [1, 5]}, {"ok": [0]}], kappas=(5,))
    np.testing.assert_allclose(res.aps, [1 / 8, 0], rtol=0, atol=1e-15)
    np.testing.assert_allclose(res.precisions[:, 0], [1 / 2, 0], rtol=0, atol=1e-15)
    np.testing.assert_allclose(res.recalls[:, 0], [1 / 2, 0], rtol=0, atol=1e-15)


def test_compute_map_every_query_empty_is_nan():
    res = compute_map(column(0, 1), [{"ok": []}])
    assert np.isnan(res.mean_ap) and np.all(np.isnan(res.mean_precision)) and res.skipped == (0,)
    assert res.to_json()["mAP"] is None


@pytest.mark.parametrize(("ranks", "match"), [
    (np.zeros((3, 2), dtype=np.int64), "shape"),           # 2 columns for 1 query
    (np.array([[0.0], [1.0]]), "integer"),
    (column(0, 0, 1), "twice"),
    (column(0, -1), "non-negative"),
    (column(0, 9), "database has 3"),
])
def test_ranks_are_checked(ranks, match):
    with pytest.raises(ValueError, match=match):
        check_ranks(ranks, 1, num_database=3)


def test_ranks_transposed_hint():
    with pytest.raises(ValueError, match="transpose"):
        check_ranks(np.zeros((2, 5), dtype=np.int64), 2)


# --- ranks_from_scores ----------------------------------------------------------------------------------

def test_ranks_from_scores_ties_lower_index_first():
    scores = np.array([[0.5, 0.9, 0.5, 0.9],
                       [0.0, 0.0, 0.0, 1.0]])
    # q0: 0.9 at 1 and 3 -> 1, 3; then 0.5 at 0 and 2 -> 0, 2.  q1: 3, then ties 0, 1, 2
    np.testing.assert_array_equal(ranks_from_scores(scores), [[1, 3], [3, 0], [0, 1], [2, 2]])
    with pytest.raises(ValueError, match="finite"):
        ranks_from_scores(np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError, match="shape"):
        ranks_from_scores(np.zeros(3))


# --- protocols ----------------------------------------------------------------------------------------

GND = [{"easy": np.array([0]), "hard": np.array([2]), "junk": np.array([4]), "bbx": np.array([0.0, 0, 9, 9])}]
RANKS = column(1, 0, 3, 2, 4, 5)  # easy 0 at position 1, hard 2 at 3, junk 4 at 4


def test_revisited_protocol_sets():
    easy, medium, hard = (revisited_gnd(GND, p)[0] for p in ("easy", "medium", "hard"))
    assert sorted(easy["ok"]) == [0] and sorted(easy["junk"]) == [2, 4]
    assert sorted(medium["ok"]) == [0, 2] and sorted(medium["junk"]) == [4]
    assert sorted(hard["ok"]) == [2] and sorted(hard["junk"]) == [0, 4]
    classic = classic_gnd(GND)[0]
    assert sorted(classic["ok"]) == [0, 2] and sorted(classic["junk"]) == [4]
    assert sorted(classic_gnd([{"ok": [3, 1], "junk": [5]}])[0]["ok"]) == [1, 3]
    with pytest.raises(ValueError, match="protocol"):
        revisited_gnd(GND, "medium-rare")
    with pytest.raises(KeyError, match="easy"):
        revisited_gnd([{"ok": [1]}], "easy")


def test_revisited_protocols_by_hand():
    res = evaluate_revisited(RANKS, GND, kappas=(1, 5))
    # easy: ok {0} at position 1, junk {4, 2} at 3, 4 (after it) -> rank 1: AP = (0 + 1/2)/2 = 1/4;
    #       P@1 = 0 (kq = 1), P@5 = 1/2 (kq = min(2, 5) = 2)
    assert res["easy"].mean_ap == pytest.approx(1 / 4, abs=1e-15)
    np.testing.assert_allclose(res["easy"].mean_precision, [0, 1 / 2], rtol=0, atol=1e-15)
    # medium: ok {0, 2} at 1, 3, junk {4} at 4 -> AP = (0 + 1/2)/4 + (1/3 + 2/4)/4 = 1/8 + 5/24 = 1/3
    assert res["medium"].mean_ap == pytest.approx(1 / 3, abs=1e-15)
    # hard: ok {2} at 3, junk {4, 0} at 4, 1 -> one junk before it: rank 2 -> AP = (0 + 1/3)/2 = 1/6;
    #       1-based 3: P@5 = 1/3 (kq = min(3, 5) = 3), R@5 = 1
    assert res["hard"].mean_ap == pytest.approx(1 / 6, abs=1e-15)
    np.testing.assert_allclose(res["hard"].mean_precision, [0, 1 / 3], rtol=0, atol=1e-15)
    np.testing.assert_allclose(res["hard"].mean_recall, [0, 1], rtol=0, atol=1e-15)
    # classic = good + ok vs junk = medium here
    assert evaluate_classic(RANKS, GND)["classic"].mean_ap == res["medium"].mean_ap


def test_format_report_and_json():
    res = evaluate_revisited(RANKS, GND, kappas=(1, 5))
    text = format_report(res)
    assert text.splitlines() == [
        "easy (1 queries, 0 skipped without positives)", "  mAP=25.00", "  mP@k[1 5] [0.00 50.00]",
        "  mR@k[1 5] [0.00 100.00]",
        "medium (1 queries, 0 skipped without positives)", "  mAP=33.33", "  mP@k[1 5] [0.00 50.00]",
        "  mR@k[1 5] [0.00 100.00]",
        "hard (1 queries, 0 skipped without positives)", "  mAP=16.67", "  mP@k[1 5] [0.00 33.33]",
        "  mR@k[1 5] [0.00 100.00]"]
    js = json.loads(json.dumps(report_json(res)))
    assert js["hard"]["mAP"] == pytest.approx(1 / 6) and js["easy"]["mP@5"] == 0.5 and js["easy"]["mR@5"] == 1.0
    assert js["medium"]["num_evaluated"] == 1 and js["medium"]["skipped_queries"] == []


# --- place recognition ----------------------------------------------------------------------------------

DB_UTM = np.array([[0.0, 0.0], [100.0, 0.0], [15.0, 20.0], [0.0, 26.0], [500.0, 500.0]])
Q_UTM = np.array([[0.0, 0.0], [1000.0, 1000.0], [100.0, 5.0]])
# within 25 m: q0 -> db 0 (0 m) and db 2 (exactly 25 m, inclusive), not db 3 (26 m); q1 -> none; q2 -> db 1 (5 m)
POSITIVES = [[0, 2], [], [1]]
# q0 first hits at position 1; q1 has no positive (left out); q2 first hits at position 2
PRED = np.array([[4, 2, 0], [0, 1, 2], [3, -1, 1]])


def test_positives_within_radius_kdtree_and_numpy_fallback(monkeypatch):
    got = pr.positives_within_radius(DB_UTM, Q_UTM, 25.0)
    assert [p.tolist() for p in got] == POSITIVES
    monkeypatch.setitem(sys.modules, "scipy.spatial", None)  # import fails -> chunked numpy brute force
    monkeypatch.setattr(rr, "_BRUTE_FORCE_ELEMENTS", 7)  # 1 query per chunk
    got = pr.positives_within_radius(DB_UTM, Q_UTM, 25.0)
    assert [p.tolist() for p in got] == POSITIVES
    assert all(p.dtype == np.int64 for p in got)


def test_radius_backends_agree_on_random_points():
    rng = np.random.default_rng(0)
    db, q = rng.uniform(0, 300, (400, 2)), rng.uniform(0, 300, (50, 2))
    a = rr._within_radius_kdtree(db, q, 25.0)
    b = rr._within_radius_brute(db, q, 25.0)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    with pytest.raises(ValueError, match="radius"):
        pr.positives_within_radius(db, q, 0.0)
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        pr.positives_within_radius(db[:, :1], q)


def test_recall_at_n_by_hand():
    res = pr.recall_at_n(PRED, [np.array(p) for p in POSITIVES], ns=(1, 2, 3))
    # evaluated queries q0, q2: R@1 = 0/2, R@2 = 1/2 (q0), R@3 = 2/2
    assert res.recall == {1: 0.0, 2: 0.5, 3: 1.0}
    assert res.num_queries == 3 and res.without_positives == (1,)
    np.testing.assert_array_equal(res.first_hit, [1, -1, 2])
    assert res.to_json()["num_evaluated"] == 2
    with pytest.raises(ValueError, match="K=3"):
        pr.recall_at_n(PRED, POSITIVES, ns=(1, 5))
    with pytest.raises(ValueError, match="database has 4"):
        pr.recall_at_n(PRED, POSITIVES, ns=(1,), num_database=4)
    assert np.isnan(pr.recall_at_n(PRED, [[], [], []], ns=(1,)).recall[1])


VG_NAME = "@0584253.53@4477234.74@17@T@040.44533@-079.99525@pano01@00@090@000@@@20190101@@.jpg"


def test_parse_vg_name():
    assert pr.parse_vg_name(f"/data/pitts30k/images/test/database/{VG_NAME}") == (584253.53, 4477234.74)
    assert pr.parse_vg_name("@-12.5@3e2@@@@@@@@@@@@@.png") == (-12.5, 300.0)
    assert pr.parse_vg_name("@1@2") == (1.0, 2.0)
    np.testing.assert_array_equal(pr.utm_from_names([VG_NAME, "@1@2@"]), [[584253.53, 4477234.74], [1, 2]])
    assert pr.utm_from_names([]).shape == (0, 2)


@pytest.mark.parametrize("name", ["image.jpg", "x@1@2@.jpg", "@1.jpg", "@abc@4477234.74@17@T@.jpg",
                                  "@584253.53@@17@T@.jpg", "@nan@1@.jpg", "@1_000@2@.jpg", "@ 1@2@.jpg"])
def test_parse_vg_name_malformed(name):
    with pytest.raises(ValueError) as e:
        pr.parse_vg_name(f"dir/{name}")
    assert str(e.value).startswith(f"dir/{name}: ") and "\n" not in str(e.value)


# --- gnd pickles and the restricted unpickler --------------------------------------------------------

IMLIST = ["all_souls_000001", "all_souls_000002", "radcliffe_camera_000003", "oxford_000004", "oxford_000005",
          "oxford_000006"]


def write_gnd(path, gnd, protocol=pickle.HIGHEST_PROTOCOL, imlist=IMLIST):
    with open(path, "wb") as f:
        pickle.dump({"imlist": imlist, "qimlist": [f"q{i}" for i in range(len(gnd))], "gnd": gnd}, f,
                    protocol=protocol)
    return path


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_load_gnd_numpy_pickle(tmp_path, protocol):
    gnd = [{"bbx": np.array([1.5, 2.0, 30.0, 40.0]), "easy": np.array([0, 3]), "hard": np.array([2], dtype=np.int32),
            "junk": np.array([], dtype=np.int64)},
           {"bbx": [0.0, 0.0, np.float64(9.0), 9.0], "easy": [1], "hard": np.array([4.0]), "junk": [5, 0]}]
    gt = load_gnd(write_gnd(tmp_path / "gnd_roxford5k.pkl", gnd, protocol))
    assert gt.imlist == tuple(IMLIST) and gt.qimlist == ("q0", "q1") and gt.is_revisited
    np.testing.assert_array_equal(gt.gnd[0]["easy"], [0, 3])
    assert gt.gnd[1]["hard"].dtype == np.int64 and gt.gnd[1]["hard"].tolist() == [4]  # float indices as in .mat
    np.testing.assert_array_equal(gt.gnd[1]["bbx"], [0, 0, 9, 9])
    # easy of q0: ok {0, 3} first, junk {2} next -> AP 1
    assert evaluate_revisited(np.tile(column(0, 3, 2, 1, 4, 5), (1, 2)), gt.gnd)["easy"].aps[0] == 1.0


def test_load_gnd_original_oxford(tmp_path):
    gt = load_gnd(write_gnd(tmp_path / "gnd_oxford5k.pkl", [{"ok": [1, 2], "junk": [3], "bbx": [0, 0, 1, 1]}]))
    assert not gt.is_revisited and gt.gnd[0]["ok"].tolist() == [1, 2]


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def evil_pickle(payload: str, marker) -> bytes:
    if payload == "os.system":
        return pickle.dumps({"imlist": Evil(marker), "qimlist": [], "gnd": []}, protocol=2)
    if payload == "builtins.eval":
        return pickle.dumps({"gnd": eval}, protocol=4)  # pickled by reference, never called
    # _codecs.encode is allowed for protocol-2 bytes, but only as encode(str, "latin1")
    return b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x04\x00\x00\x00zlib\x86R."


@pytest.mark.parametrize("payload", ["os.system", "builtins.eval", "codecs"])
def test_load_gnd_refuses_code(tmp_path, payload):
    marker = tmp_path / "pwned"
    path = tmp_path / "gnd_evil.pkl"
    path.write_bytes(evil_pickle(payload, marker))
    with pytest.raises(DatasetError, match="refusing") as e:
        load_gnd(path)
    assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)
    assert not marker.exists()


@pytest.mark.parametrize(("content", "match"), [
    (b"not a pickle", "not a readable ground-truth pickle"),
    ([1, 2], "expected a dict"),
    ({"imlist": IMLIST, "qimlist": ["q"]}, "one entry per query"),
    ({"qimlist": ["q"], "gnd": [{}]}, "no 'imlist'"),
    ({"imlist": IMLIST, "qimlist": ["q"], "gnd": [{"easy": [0], "hard": [9], "junk": []}]}, r"outside \[0, 6\)"),
    ({"imlist": IMLIST, "qimlist": ["q"], "gnd": [{"easy": [0.5], "hard": [], "junk": []}]}, "non-integer"),
    ({"imlist": IMLIST, "qimlist": ["q"], "gnd": [{"easy": [0], "hard": []}]}, "needs 'easy'"),
    ({"imlist": IMLIST, "qimlist": ["q"], "gnd": [{"ok": [0], "extra": 1}]}, "unknown keys"),
    ({"imlist": [1, 2], "qimlist": ["q"], "gnd": [{"ok": [0]}]}, "list of image names"),
])
def test_load_gnd_malformed(tmp_path, content, match):
    path = tmp_path / "gnd_bad.pkl"
    path.write_bytes(content if isinstance(content, bytes) else pickle.dumps(content))
    with pytest.raises(DatasetError, match=match) as e:
        load_gnd(path)
    assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)


# --- CLI --------------------------------------------------------------------------------------------

runner = CliRunner()


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def test_cli_eval_retrieval(tmp_path):
    gnd_path = write_gnd(tmp_path / "gnd_roxford5k.pkl", GND)
    scores = np.array([[0.5, 0.9, 0.2, 0.4, 0.1, 0.0]])  # ranks 1, 0, 3, 2, 4, 5 = RANKS
    np.save(tmp_path / "scores.npy", scores)
    np.save(tmp_path / "ranks.npy", RANKS)
    out = tmp_path / "report.json"
    result = invoke("eval", "retrieval", "--gnd", gnd_path, "--scores", tmp_path / "scores.npy", "--k", 1, "--k", 5,
                    "--out", out)
    assert result.exit_code == 0, result.output
    assert "  mAP=25.00" in result.stdout and "  mAP=16.67" in result.stdout and "mP@k[1 5]" in result.stdout
    report = json.loads(out.read_text())
    assert report["results"]["medium"]["mAP"] == pytest.approx(1 / 3) and report["protocol"] == "revisited"
    result = invoke("eval", "retrieval", "--gnd", gnd_path, "--ranks", tmp_path / "ranks.npy", "--protocol", "classic")
    assert result.exit_code == 0, result.output
    assert "classic (1 queries" in result.stdout and "mAP=33.33" in result.stdout and "mP@k[1 5 10]" in result.stdout


@pytest.mark.parametrize("case", ["missing-gnd", "ranks-shape", "scores-shape", "both", "protocol", "not-npy",
                                  "original-gnd"])
def test_cli_eval_retrieval_bad_input(tmp_path, case):
    gnd = write_gnd(tmp_path / "gnd_roxford5k.pkl", GND)
    original = write_gnd(tmp_path / "gnd_oxford5k.pkl", [{"ok": [1]}])
    np.save(tmp_path / "ranks.npy", RANKS)
    np.save(tmp_path / "ranks_t.npy", RANKS.T)
    np.save(tmp_path / "scores.npy", np.zeros((2, 6)))
    (tmp_path / "text.npy").write_text("hello")
    ranks, scores = ["--ranks", tmp_path / "ranks.npy"], ["--scores", tmp_path / "scores.npy"]
    args, expected = {
        "missing-gnd": (["--gnd", tmp_path / "nope.pkl", *ranks], "nope.pkl: ground-truth file not found"),
        "ranks-shape": (["--gnd", gnd, "--ranks", tmp_path / "ranks_t.npy"], "ranks_t.npy: ranks must have shape"),
        "scores-shape": (["--gnd", gnd, *scores], "scores.npy: scores must be numbers of shape [nq=1, db=6]"),
        "both": (["--gnd", gnd, *ranks, *scores], "exactly one of --ranks or --scores"),
        "protocol": (["--gnd", gnd, *ranks, "--protocol", "new"], "--protocol"),
        "not-npy": (["--gnd", gnd, "--ranks", tmp_path / "text.npy"], "text.npy: not a .npy array"),
        "original-gnd": (["--gnd", original, *ranks], "gnd_oxford5k.pkl: no 'easy' / 'hard' / 'junk'"),
    }[case]
    result = invoke("eval", "retrieval", *args)
    assert result.exit_code == 2, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and expected in result.stderr


def test_cli_eval_recall(tmp_path):
    np.save(tmp_path / "db.npy", DB_UTM)
    np.save(tmp_path / "q.npy", Q_UTM)
    np.save(tmp_path / "pred.npy", PRED)
    out = tmp_path / "recall.json"
    result = invoke("eval", "recall", "--db-utm", tmp_path / "db.npy", "--query-utm", tmp_path / "q.npy",
                    "--pred", tmp_path / "pred.npy", "--n", 1, "--n", 2, "--n", 3, "--out", out)
    assert result.exit_code == 0, result.output
    assert "R@1: 0.00  R@2: 50.00  R@3: 100.00" in result.stdout and "1 without a positive" in result.stdout
    assert json.loads(out.read_text())["recall@2"] == 0.5
    # the same positions as VG names; within 4 m: q0 -> db 0 only (first hit at position 2), q1 and q2 -> none
    names = lambda utm: "\n".join(f"@{e}@{n}@17@T@@@@@@@@@@@.jpg" for e, n in utm) + "\n"  # noqa: E731
    (tmp_path / "db.txt").write_text(names(DB_UTM))
    (tmp_path / "q.txt").write_text(names(Q_UTM))
    result = invoke("eval", "recall", "--db-names", tmp_path / "db.txt", "--query-names", tmp_path / "q.txt",
                    "--pred", tmp_path / "pred.npy", "--radius", 4, "--n", 1, "--n", 3)
    assert result.exit_code == 0, result.output
    assert "2 without a positive within 4 m" in result.stdout and "R@1: 0.00  R@3: 100.00" in result.stdout


@pytest.mark.parametrize("case", ["bad-name", "utm-shape", "pred-rows", "n-too-large", "two-sources", "no-pred"])
def test_cli_eval_recall_bad_input(tmp_path, case):
    np.save(tmp_path / "db.npy", DB_UTM)
    np.save(tmp_path / "q.npy", Q_UTM)
    np.save(tmp_path / "q3.npy", np.zeros((3, 3)))
    np.save(tmp_path / "pred.npy", PRED)
    np.save(tmp_path / "pred2.npy", PRED[:2])
    (tmp_path / "db.txt").write_text(f"{VG_NAME}\n@1@x@.jpg\n")
    db = ["--db-utm", tmp_path / "db.npy"]
    q = ["--query-utm", tmp_path / "q.npy"]
    pred = ["--pred", tmp_path / "pred.npy"]
    args, expected = {
        "bad-name": (["--db-names", tmp_path / "db.txt", *q, *pred], "db.txt"),
        "utm-shape": ([*db, "--query-utm", tmp_path / "q3.npy", *pred], "q3.npy"),
        "pred-rows": ([*db, *q, "--pred", tmp_path / "pred2.npy"], "pred2.npy"),
        "n-too-large": ([*db, *q, *pred, "--n", 4], "pred.npy"),
        "two-sources": ([*db, "--db-names", tmp_path / "db.txt", *q, *pred], "--db-names"),
        "no-pred": ([*db, *q, "--pred", tmp_path / "none.npy"], "none.npy"),
    }[case]
    result = invoke("eval", "recall", *args)
    assert result.exit_code == 2, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and expected in result.stderr
