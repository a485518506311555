"""Speed and memory of extractors and matchers on this machine (numbers for the docs, not tests).

Each configuration runs in a fresh process (so peak memory is its own): it builds the part, warms
up, then times ``runs`` calls and reports the median. Extraction runs on a real photo resized to
``size``; matching runs on the features of a real homography pair at that size.
"""

from __future__ import annotations

import multiprocessing as mp
import platform
import resource
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from visloc.errors import InputError


@dataclass(frozen=True)
class BenchResult:
    """One timed configuration."""

    kind: str  # "extract", "match" (a feature matcher) or "pair" (an image matcher, images in)
    name: str
    median_ms: float
    p90_ms: float
    peak_rss_mb: float
    num_keypoints: float
    num_matches: float
    threads: int
    size: tuple[int, int]


def _bench_image(size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    from visloc.data.homography import synthetic_pairs

    pair = synthetic_pairs(seed=0, pairs_per_photo=1, size=size, photos=("astronaut",))[0]
    return pair.image0, pair.image1


def _time(fn, warmup: int, runs: int) -> list[float]:  # noqa: ANN001
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def _time_pair(name: str, overrides: Sequence[str], img0: np.ndarray, img1: np.ndarray, warmup: int,
               runs: int) -> tuple[list[float], float, float]:
    """An image matcher on the pair: times, mean keypoints per image, matches."""
    from visloc.features.api import image_to_tensor
    from visloc.matching import MATCHERS

    ma = MATCHERS.build(name, overrides)
    t0, t1 = image_to_tensor(img0), image_to_tensor(img1)
    (out,) = ma(t0, t1)
    return _time(lambda: ma(t0, t1), warmup, runs), (out.num0 + out.num1) / 2, float(out.num_matches)


def _worker(kind: str, name: str, extractor: str, overrides: Sequence[str], size: tuple[int, int],
            threads: int, warmup: int, runs: int, queue: mp.Queue, extractor_overrides: Sequence[str] = ()) -> None:
    torch.set_num_threads(threads)
    if kind == "pair":
        times, n_kp, n_m = _time_pair(name, overrides, *_bench_image(size), warmup, runs)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        queue.put(BenchResult(kind, name, statistics.median(times), float(np.percentile(times, 90)), peak, n_kp,
                              n_m, threads, size))
        return
    from visloc.features import EXTRACTORS
    from visloc.features.api import extract_image
    from visloc.matching import MATCHERS
    from visloc.matching.select import descriptor_family, matcher_conf

    img0, img1 = _bench_image(size)
    econf = EXTRACTORS.conf(extractor, overrides if kind == "extract" else extractor_overrides)
    ex = EXTRACTORS.build_conf(extractor, econf)
    f0, f1 = extract_image(ex, img0, None), extract_image(ex, img1, None)
    n_kp = (f0.num_keypoints + f1.num_keypoints) / 2
    n_m = float("nan")
    if kind == "extract":
        times = _time(lambda: extract_image(ex, img0, None), warmup, runs)
    else:
        ma = MATCHERS.build_conf(name, matcher_conf(name, overrides, descriptor_family(extractor, econf)))
        n_m = float(ma(f0, f1).num_matches)
        times = _time(lambda: ma(f0, f1), warmup, runs)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    label = name if kind == "extract" else f"{name} ({', '.join((extractor, *extractor_overrides))})"
    queue.put(BenchResult(kind, label, statistics.median(times), float(np.percentile(times, 90)), peak, n_kp, n_m,
                          threads, size))


def check_bench_args(threads: int, runs: int, warmup: int, size: tuple[int, int]) -> None:
    """Raise ``InputError`` naming the ``visloc bench`` option whose value is out of range."""
    for option, value, low, high in (("--threads", threads, 1, 1024), ("--runs", runs, 1, 100_000),
                                     ("--warmup", warmup, 0, 100_000), ("--width", size[0], 8, 16384),
                                     ("--height", size[1], 8, 16384)):
        if not low <= value <= high:
            raise InputError(f"bench {option}: expected {low} to {high}, got {value}")


def run_one(kind: str, name: str, *, extractor: str, overrides: Sequence[str] = (),
            extractor_overrides: Sequence[str] = (), size: tuple[int, int] = (640, 480), threads: int = 2,
            warmup: int = 2, runs: int = 10) -> BenchResult:
    """Benchmark one extractor, feature matcher or image matcher in a fresh process.

    ``kind``: ``"extract"`` (extractor ``extractor``), ``"match"`` (feature matcher ``name`` on ``extractor``'s
    features, made with ``extractor_overrides``) or ``"pair"`` (image matcher ``name`` on the images; ``extractor``
    unused). ``overrides`` go to the extractor for ``"extract"``, else to the matcher.

    Unknown names raise ``UnknownNameError`` here, before the process starts; a failure inside the
    process (its traceback is on stderr) raises ``RuntimeError``.
    """
    from visloc.features import EXTRACTORS
    from visloc.matching import MATCHERS

    if kind not in ("extract", "match", "pair"):
        raise ValueError(f"kind: expected extract, match or pair, got {kind!r}")
    if kind != "pair":
        EXTRACTORS.entry(extractor)
    if kind != "extract":
        MATCHERS.entry(name)
    ctx = mp.get_context("spawn")
    queue: mp.Queue = ctx.Queue()
    proc = ctx.Process(target=_worker, args=(kind, name, extractor, tuple(overrides), size, threads, warmup, runs,
                                             queue, tuple(extractor_overrides)))
    proc.start()
    proc.join()
    if proc.exitcode != 0 or queue.empty():
        raise RuntimeError(f"benchmark of {kind} {name!r} failed (exit code {proc.exitcode})")
    return queue.get()


def machine_line(threads: int) -> str:
    """What the numbers were measured on."""
    return (f"{platform.processor() or platform.machine()}, {mp.cpu_count()} cores, torch {torch.__version__}, "
            f"{threads} threads")


def format_results(results: Sequence[BenchResult]) -> str:
    """Markdown table of results."""
    lines = ["| kind | name | median ms | p90 ms | peak RSS MB | keypoints | matches |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.kind} | {r.name} | {r.median_ms:.1f} | {r.p90_ms:.1f} | {r.peak_rss_mb:.0f} | "
                     f"{r.num_keypoints:.0f} | {'' if np.isnan(r.num_matches) else f'{r.num_matches:.0f}'} |")
    return "\n".join(lines)


def results_json(results: Sequence[BenchResult]) -> list[dict]:
    """JSON-ready results."""
    return [asdict(r) for r in results]
