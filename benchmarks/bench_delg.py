"""DELG extraction speed and peak memory on this CPU: torch eager vs onnxruntime, ResNet-50 and ResNet-18.

Usage: python benchmarks/bench_delg.py [--threads 2] [--runs 5] [--size 1024x768] [--out outputs/bench_delg.json]
                                       [--quick]

Every row is the registered extractor through ``extract_image`` (normalisation, the full 7-scale pyramid
0.25 ... 2.0 with the 3 global scales 0.7071, 1, 1.4142, selection of at most 1000 features, the global
aggregation, numpy outputs) on one photo (``data.homography.synthetic_pairs``, astronaut) of ``--size``
(DELG's 1024 px on the long side by default), in its own fresh process (``pipelines.bench.run_one``):
median and 90th percentile of ``--runs`` timed calls after 2 untimed extractions and ``warmup`` calls,
peak RSS the process's ``ru_maxrss`` (building included; ``tracemalloc`` does not see torch's memory;
the ONNX exports run in processes of their own, as ``ru_maxrss`` is inherited through ``exec``),
``--threads`` intra-op threads for torch and onnxruntime alike. Rows:

- ``delg R50 (torch)``: ``delg`` with the tf-layout ResNet-50 (``preset=delg-r50``), BatchNorms folded,
  ``channels_last``;
- ``delg R50 (onnxruntime)``: ``delg-onnx`` on the ONNX file ``visloc export delg`` writes (exported here
  first, parity-checked), one session run per scale and image (the graph computes conv5 at every
  scale, torch only at the 3 global ones: ~10 % more work at 1024 px, see ``features.delg_onnx``);
- ``delg-global R50 (torch)``: the 3 global scales alone (what retrieval without re-ranking pays);
- ``delg R18 (torch)`` / ``(onnxruntime)``: the ResNet-18 preset trained on CPUs (``delg-r18``).

The networks have random weights (``allow_random``): speed does not depend on them, and the threshold
is off (top-k), so every row keeps ``max_num_keypoints`` features as a trained model at its threshold
keeps at most. The official anchor: 211 ms per image for R50 DELG (local + global; R101 383 ms) on a
Tesla P100 GPU, the DELG paper's latency as the ViTGaL paper's Table 1 reproduces it (research notes
``delf-delg.md`` section 4; the official ``delg/measure_latency.py`` repeats each image 10 times).
``--quick``: 160x120, the two R18 rows, no warm-up, one run: the whole code path, numbers meaningless.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import tempfile
import warnings
from dataclasses import asdict
from pathlib import Path

from visloc.pipelines.bench import BenchResult, format_results, machine_line, run_one

#: R50 DELG on a Tesla P100 (the DELG paper's latency): the GPU anchor, ms per image
OFFICIAL_P100_MS = 211.0
#: (label, extractor, preset, backend) per row, in table order
ROWS = (("delg R50 (torch)", "delg", "delg-r50", "torch"),
        ("delg R50 (onnxruntime)", "delg-onnx", "delg-r50", "ort"),
        ("delg-global R50 (torch)", "delg-global", "delg-r50", "torch"),
        ("delg R18 (torch)", "delg", "delg-r18", "torch"),
        ("delg R18 (onnxruntime)", "delg-onnx", "delg-r18", "ort"))
QUICK_ROWS = tuple(r for r in ROWS if r[2] == "delg-r18")


def _size(text: str) -> tuple[int, int]:
    w, h = (int(v) for v in text.lower().split("x"))
    return w, h


def export_onnx_file(preset: str, out: Path) -> Path:
    """``visloc export delg`` of a random ``preset`` network to ``out`` (parity-checked at small sizes)."""
    from visloc.pipelines.export import export_registered

    with warnings.catch_warnings():  # DELG.forward's shape checks are constants in the graph by design
        warnings.filterwarnings("ignore", message="Converting a tensor to a Python")
        return export_registered("delg", out, [f"preset={preset}"], allow_random=True).out


def export_in_child(preset: str, out: Path) -> Path:
    """``export_onnx_file`` in a fresh process: ``ru_maxrss`` survives ``exec``, so a large export in this
    process would raise the peak every later row reports."""
    ctx = mp.get_context("spawn")
    proc = ctx.Process(target=export_onnx_file, args=(preset, out))
    proc.start()
    proc.join()
    if proc.exitcode != 0 or not out.is_file():
        raise RuntimeError(f"ONNX export of {preset} failed (exit code {proc.exitcode})")
    return out


def run_rows(rows: tuple[tuple[str, str, str, str], ...], size: tuple[int, int], threads: int, warmup: int,
             runs: int) -> list[BenchResult]:
    """Each row in a fresh process; the ONNX files are exported first, once per preset."""
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        onnx = {p: export_in_child(p, Path(tmp) / f"{p}.onnx") for _, _, p, b in rows if b == "ort"}
        for label, extractor, preset, backend in rows:
            overrides = [f"preset={preset}", "allow_random=true", "resize_max=null"]
            if backend == "ort":
                overrides.append(f"onnx={onnx[preset]}")
            results.append(run_one("extract", label, extractor=extractor, overrides=overrides, size=size,
                                   threads=threads, warmup=warmup, runs=runs))
    return results


def anchor_lines(results: list[BenchResult]) -> list[str]:
    """Each R50 row against the official P100 time."""
    return [f"{r.name}: {r.median_ms:.0f} ms = {r.median_ms / OFFICIAL_P100_MS:.1f} x the official "
            f"{OFFICIAL_P100_MS:.0f} ms (R50 DELG, P100 GPU)" for r in results if "R50" in r.name]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--size", type=_size, default=(1024, 768), help="WxH of the image (default 1024x768)")
    parser.add_argument("--out", type=Path, default=None, help="JSON of the results")
    parser.add_argument("--quick", action="store_true", help="160x120, the R18 rows, 1 run, no warm-up")
    args = parser.parse_args()
    size, rows = ((160, 120), QUICK_ROWS) if args.quick else (args.size, ROWS)
    warmup, runs = (0, 1) if args.quick else (1, args.runs)
    results = run_rows(rows, size, args.threads, warmup, runs)
    machine = f"{machine_line(args.threads)}, load average {os.getloadavg()[0]:.1f}, {size[0]}x{size[1]}"
    print(machine)
    print(format_results(results))
    for line in anchor_lines(results):
        print(line)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"machine": machine, "results": [asdict(r) for r in results],
                                        "official_p100_ms": OFFICIAL_P100_MS}, indent=1))


if __name__ == "__main__":
    main()
