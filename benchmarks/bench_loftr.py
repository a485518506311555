"""Coarse LoFTR speed and memory against full LoFTR and ALIKED + LightGlue, in one run (Markdown table + JSON).

Usage: python benchmarks/bench_loftr.py [--weights FILE] [--preset s] [--threads 2] [--runs 10] [--loftr-runs 2]
                                        [--sizes 640x480 320x240] [--out outputs/bench_loftr.json] [--quick]

Rows, at each size (every row in its own fresh process, ``torch.set_num_threads(threads)`` and as many
onnxruntime intra-op threads):

- ``loftr-coarse`` / torch / matcher: the registered matcher on two RGB images (gray conversion, the
  network, the match mask and the match extraction);
- ``loftr-coarse`` / torch / graph: ``CoarseLoFTRGraph`` alone (network + mask) on gray tensors;
- ``loftr-coarse-onnx`` / onnxruntime / matcher: the registered matcher (resize to the graph's size, the
  session, the match extraction) on the ONNX file exported here (``export_model``, parity-checked);
- ``loftr-coarse-onnx`` / onnxruntime / graph: that file's session run alone;
- ``loftr`` / torch: kornia's full LoFTR (coarse + fine) built with ``LoFTR(pretrained=None)``: random
  weights, nothing downloaded; its cost is the backbone and transformers', whatever the weights (the fine
  stage grows with the number of coarse matches, reported);
- ``aliked-n16+lightglue`` / torch: ``detector-pair`` defaults, extraction of both images + matching.

XFeat + LighterGlue has no row: the registry has no ``xfeat`` extractor.

Time: median (and 90th percentile) of ``runs`` timed calls after ``warmup`` calls, on a real photo and
its synthetic homography warp (``data.homography.synthetic_pairs``, astronaut) at that size; pairs/s is
1000 / median; "x LoFTR" is full LoFTR's median at that size over the row's. On a shared machine the
load swings: every row is measured ``--rounds`` times (the rows interleaved, a fresh process each time) and
the round with the lowest median is kept (the JSON has them all).
Memory: the process's peak resident set (``VmHWM``) and its rise while matching: the peak is reset
(``/proc/self/clear_refs`` = 5) after the part is built, so the rise is the peak RSS during warm-up and
timed calls minus the RSS before them (``peak_method`` "hwm-reset"; where the kernel refuses the reset,
``ru_maxrss`` minus that RSS, a lower bound when building peaked higher: "ru_maxrss").
Without ``--weights`` the Coarse LoFTR rows run a random network of ``--preset`` (its speed is the
trained one's; its match counts mean nothing). ``--in-process``: every row in this process (faster; the
peak RSS column then includes the earlier rows, the rise does not). ``--quick``: one size 160x128, no warm-up,
one run, in this process.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import re
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

#: (method, runtime, part) per row, in table order; LoFTR first (the speed-up reference)
ROWS = (("loftr", "torch", "matcher"),
        ("aliked-n16+lightglue", "torch", "matcher"),
        ("loftr-coarse", "torch", "matcher"),
        ("loftr-coarse", "torch", "graph"),
        ("loftr-coarse-onnx", "onnxruntime", "matcher"),
        ("loftr-coarse-onnx", "onnxruntime", "graph"))
#: the issue's goals at 640x480
GOAL_SPEEDUP, GOAL_PAIRS_PER_S, GOAL_SIZE = 45.0, 15.0, (640, 480)


@dataclass(frozen=True)
class Job:
    """What one worker process measures."""

    method: str
    runtime: str
    part: str
    size: tuple[int, int]  # (W, H)
    threads: int
    warmup: int
    runs: int
    weights: str | None
    preset: str
    onnx: str | None  # the exported graph at ``size`` (onnxruntime rows)


@dataclass(frozen=True)
class Result:
    """One measured row."""

    method: str
    runtime: str
    part: str
    size: tuple[int, int]
    median_ms: float
    p90_ms: float
    pairs_per_s: float
    peak_rss_mb: float
    match_rss_mb: float
    peak_method: str
    num_matches: float
    threads: int
    runs: int


def _status_kb(key: str) -> int:
    match = re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    if match is None:
        raise RuntimeError(f"/proc/self/status has no {key}")
    return int(match.group(1))


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _images(size: tuple[int, int]):  # noqa: ANN202
    """The bench pair as ``[1, 3, H, W]`` RGB and ``[1, 1, H, W]`` gray float tensors in [0, 1]."""
    import torch

    from visloc.data.homography import synthetic_pairs
    from visloc.utils.image_ops import rgb_to_gray_torch

    pair = synthetic_pairs(seed=0, pairs_per_photo=1, size=size, photos=("astronaut",))[0]
    rgb = [torch.from_numpy(np.ascontiguousarray(im.transpose(2, 0, 1)))[None].float()
           for im in (pair.image0, pair.image1)]
    gray = [rgb_to_gray_torch(im) for im in rgb]
    return rgb, gray


def _coarse_conf(job: Job, **extra: object) -> dict:
    return {"weights": job.weights, "preset": job.preset, "allow_random": job.weights is None, **extra}


def _build(job: Job):  # noqa: ANN202, C901
    """``call() -> number of matches`` for the job's row (built, not yet run)."""
    import torch

    from visloc.registry import MATCHERS

    rgb, gray = _images(job.size)
    key = (job.method, job.part)
    if key == ("loftr", "matcher"):
        from kornia.feature import LoFTR

        net = LoFTR(pretrained=None).eval()  # random weights: never the default, which downloads
        return lambda: len(net({"image0": gray[0], "image1": gray[1]})["keypoints0"])
    if job.method in ("aliked-n16+lightglue", "loftr-coarse") and job.part == "matcher":
        name = "detector-pair" if job.method == "aliked-n16+lightglue" else "loftr-coarse"
        conf = MATCHERS.conf(name) if name == "detector-pair" else MATCHERS.conf(name, _coarse_conf(job))
        matcher = MATCHERS.build_conf(name, conf)
        return lambda: int(matcher(rgb[0], rgb[1])[0].num_matches)
    if key == ("loftr-coarse", "graph"):
        from visloc.matching.image.coarse_loftr import resolve_coarse_loftr
        from visloc.models.coarse_loftr import CoarseLoFTRGraph

        graph = CoarseLoFTRGraph(resolve_coarse_loftr(job.weights, job.preset, job.weights is None)).eval()

        def run_graph() -> int:
            with torch.inference_mode():
                return int(graph(gray[0], gray[1])["mask"].sum())
        return run_graph
    if key == ("loftr-coarse-onnx", "matcher"):
        matcher = MATCHERS.build_conf("loftr-coarse-onnx", MATCHERS.conf(
            "loftr-coarse-onnx", _coarse_conf(job, onnx=job.onnx, num_threads=job.threads)))
        return lambda: int(matcher(rgb[0], rgb[1])[0].num_matches)
    if key == ("loftr-coarse-onnx", "graph"):
        from visloc.export import onnx_session

        session = onnx_session(str(job.onnx), job.threads)
        feed = {"image0": gray[0].numpy(), "image1": gray[1].numpy()}
        return lambda: int(np.asarray(session.run(["conf", "mask"], feed)[1]).sum())
    raise ValueError(f"no benchmark row {key}")


def measure(job: Job) -> Result:
    """Build the job's row, reset the peak RSS, warm up, time ``runs`` calls (in this process)."""
    import gc

    import torch

    torch.set_num_threads(job.threads)
    call = _build(job)
    gc.collect()
    reset = _reset_peak()
    rss0 = _status_kb("VmRSS")
    for _ in range(job.warmup):
        call()
    times, matches = [], 0
    for _ in range(job.runs):
        t = time.perf_counter()
        matches = call()
        times.append((time.perf_counter() - t) * 1000)
    if reset:
        peak, how = _status_kb("VmHWM"), "hwm-reset"
    else:
        import resource

        peak, how = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "ru_maxrss"  # KiB on Linux
    med = statistics.median(times)
    return Result(job.method, job.runtime, job.part, job.size, med, float(np.percentile(times, 90)), 1000 / med,
                  peak / 1024, max(0, peak - rss0) / 1024, how, float(matches), job.threads, job.runs)


def _worker(job: Job, queue: mp.Queue) -> None:
    queue.put(measure(job))


def run_job(job: Job) -> Result:
    """Measure one row in a fresh (spawned) process; ``RuntimeError`` when it fails (traceback on stderr)."""
    ctx = mp.get_context("spawn")
    queue: mp.Queue = ctx.Queue()
    proc = ctx.Process(target=_worker, args=(job, queue))
    proc.start()
    proc.join()
    if proc.exitcode != 0 or queue.empty():
        raise RuntimeError(f"benchmark of {job.method} ({job.runtime} {job.part}) at {job.size} failed "
                           f"(exit code {proc.exitcode})")
    return queue.get()


def export_graph(weights: str | None, preset: str, size: tuple[int, int], out: Path) -> Path:
    """``CoarseLoFTRGraph`` of the weights at ``size``, exported to ``out`` with the parity check."""
    from visloc.export import export_model
    from visloc.matching.image.coarse_loftr import resolve_coarse_loftr
    from visloc.models.coarse_loftr import CoarseLoFTRGraph

    graph = CoarseLoFTRGraph(resolve_coarse_loftr(weights, preset, weights is None))
    with warnings.catch_warnings():  # the tracer's notes on the shape checks (static shapes on purpose)
        warnings.filterwarnings("ignore", message="Converting a tensor to a Python boolean")
        return export_model(graph, graph.export_spec(height=size[1], width=size[0]), out).out


def machine_line(threads: int) -> str:
    """What the numbers were measured on (with the load average: the machine may be shared)."""
    import onnxruntime
    import torch

    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average {load}; "
            f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, {threads} threads")


def _speedup(r: Result, results: list[Result]) -> float:
    ref = [x for x in results if x.method == "loftr" and x.size == r.size]
    return ref[0].median_ms / r.median_ms if ref else float("nan")


def format_table(results: list[Result]) -> str:
    """Markdown table, one row per result."""
    lines = ["| method | runtime | part | size | median ms | p90 ms | pairs/s | x LoFTR | peak RSS MB | "
             "matching +MB | matches |", "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r.method} | {r.runtime} | {r.part} | {r.size[0]}x{r.size[1]} | {r.median_ms:.1f} | "
                     f"{r.p90_ms:.1f} | {r.pairs_per_s:.2f} | {_speedup(r, results):.1f} | {r.peak_rss_mb:.0f} | "
                     f"{r.match_rss_mb:.1f} | {r.num_matches:.0f} |")
    return "\n".join(lines)


def goals(results: list[Result]) -> dict[str, dict[str, float | bool]]:
    """The issue's goals at 640x480 for each Coarse LoFTR row present: speed-up and pairs/s."""
    out: dict[str, dict[str, float | bool]] = {}
    for r in results:
        if r.method.startswith("loftr-coarse") and tuple(r.size) == GOAL_SIZE:
            s = _speedup(r, results)
            out[f"{r.method} {r.runtime} {r.part}"] = {
                "speedup": s, "speedup_met": bool(s >= GOAL_SPEEDUP), "pairs_per_s": r.pairs_per_s,
                "pairs_per_s_met": bool(r.pairs_per_s >= GOAL_PAIRS_PER_S) if r.runtime == "onnxruntime" else False}
    return out


def goal_lines(g: dict[str, dict[str, float | bool]]) -> str:
    """The goals as Markdown bullet lines (empty without a 640x480 run)."""
    lines = []
    for name, v in g.items():
        line = (f"- {name}: {v['speedup']:.1f}x faster than full LoFTR (goal >= {GOAL_SPEEDUP:.0f}x: "
                f"{'met' if v['speedup_met'] else 'not met'})")
        if "onnxruntime" in name:
            line += (f", {v['pairs_per_s']:.1f} pairs/s (goal >= {GOAL_PAIRS_PER_S:.0f}: "
                     f"{'met' if v['pairs_per_s_met'] else 'not met'})")
        lines.append(line)
    return "\n".join(lines)


def _jobs(args: argparse.Namespace, sizes: list[tuple[int, int]], warmup: int, runs: int) -> list[Job]:
    """Every row at every size (the ONNX file is filled in once exported)."""
    jobs = []
    for size in sizes:
        for method, runtime, part in ROWS:
            full = method == "loftr"
            jobs.append(Job(method, runtime, part, size, args.threads, min(warmup, 1) if full else warmup,
                            1 if args.quick else args.loftr_runs if full else runs, args.weights, args.preset, None))
    return jobs


def _size(text: str) -> tuple[int, int]:
    w, _, h = text.lower().partition("x")
    if not (w.isdigit() and h.isdigit()) or int(w) % 16 or int(h) % 16:
        raise argparse.ArgumentTypeError(f"size {text!r}: expected WxH, multiples of 16 (e.g. 640x480)")
    return int(w), int(h)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=None, help="a loftr-coarse checkpoint (default: a random network)")
    parser.add_argument("--preset", default="s", help="architecture of a random network or of a LoFTR file")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--loftr-runs", type=int, default=2, help="timed runs of full LoFTR (~7 s a pair)")
    parser.add_argument("--rounds", type=int, default=3, help="measure every row this many times, keep the best")
    parser.add_argument("--sizes", type=_size, nargs="+", default=[(640, 480), (320, 240)])
    parser.add_argument("--out", type=Path, default=None, help="JSON results")
    parser.add_argument("--in-process", action="store_true", help="all rows in this process (peak RSS shared)")
    parser.add_argument("--quick", action="store_true", help="160x128, no warm-up, one run, in this process")
    args = parser.parse_args(argv)
    sizes, warmup, runs = ([(160, 128)], 0, 1) if args.quick else (args.sizes, 2, args.runs)
    machine = machine_line(args.threads)
    jobs = _jobs(args, sizes, warmup, runs)
    rounds: list[list[Result]] = [[] for _ in jobs]
    with tempfile.TemporaryDirectory(prefix="visloc-bench-loftr-") as tmp:
        onnx = {size: str(export_graph(args.weights, args.preset, size, Path(tmp) / f"{size[0]}x{size[1]}.onnx"))
                for size in sizes}
        for _ in range(1 if args.quick else args.rounds):  # rows interleaved: a busy spell hits every row
            for job, done in zip(jobs, rounds, strict=True):
                job = replace(job, onnx=onnx[job.size]) if job.runtime == "onnxruntime" else job
                done.append(measure(job) if args.quick or args.in_process else run_job(job))
                print(json.dumps(asdict(done[-1])), file=sys.stderr, flush=True)
    results = [min(done, key=lambda r: r.median_ms) for done in rounds]
    weights = args.weights or f"random {args.preset} network"
    n_rounds = 1 if args.quick else args.rounds
    print(f"{machine}\n\nCoarse LoFTR weights: {weights}; per row the lowest median of {n_rounds} round(s)\n")
    print(format_table(results))
    g = goals(results)
    if g:
        print(f"\n{goal_lines(g)}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"machine": machine, "load_after": os.getloadavg(), "weights": weights,
                                        "results": [asdict(r) for r in results], "goals": g,
                                        "rounds": [[asdict(r) for r in done] for done in rounds]}, indent=1))


if __name__ == "__main__":
    main()
