"""HF-Net speed and peak memory at 640x480: torch eager vs onnxruntime vs the ALIKED teacher.

Usage: python benchmarks/bench_hfnet.py [--weights CKPT] [--threads 2] [--runs 20] [--out outputs/bench_hfnet.json]
                                        [--quick]

Every line runs in its own process (peak RSS is that process's own, ``resource.getrusage``), on the
same 640x480 photo, median of ``--runs`` calls after warm-up, ``--threads`` intra-op threads for
torch and onnxruntime alike:

- full extractors through ``extract_image`` (gray conversion, padding, network, heatmap, NMS,
  top-k, descriptor sampling, numpy outputs): ``hfnet`` (torch eager), ``hfnet-onnx``
  (onnxruntime), and the teacher ALIKED-n16 (visloc's sparse forward, and kornia's forward);
- the networks alone on a ``[1, 1, 480, 640]`` tensor: the MobileNetV2-0.75 backbone
  (``features[:18]``) and HF-Net's ``forward`` (both heads), in torch as built, in torch with the
  BatchNorms folded and ``channels_last`` (what ``hfnet`` runs), and in onnxruntime.

Without ``--weights`` the shipped default student is used when present, else a random network of
its architecture (same speed: a random network's flat heatmap always fills ``max_num_keypoints``).
Prints a Markdown table and the ratios to ALIKED's time against the targets (1/10 torch, 1/25 ORT).
``--quick``: one run each, no warm-up, two of the six network lines (ONNX export of the backbone,
the fused HF-Net), the export checked at one small size: the whole code path, numbers meaningless.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import os
import resource
import statistics
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from visloc.pipelines.bench import BenchResult, _time, format_results, machine_line, run_one

SIZE = (640, 480)
#: the network-alone lines: (network, backend)
NETS = [(w, b) for w in ("backbone", "hfnet") for b in ("torch", "torch-fused", "ort")]
NETS_QUICK = [("backbone", "ort"), ("hfnet", "torch-fused")]


def _net_worker(what: str, backend: str, threads: int, warmup: int, runs: int, queue: mp.Queue) -> None:
    torch.set_num_threads(threads)
    from visloc.features.hfnet_onnx import hfnet_to_onnx, onnx_session
    from visloc.models.backbones import fuse_batchnorm, mobilenet_v2_features
    from visloc.models.hfnet import HFNet
    from visloc.weights.hfnet import DEFAULT_STUDENT_CONF

    net = mobilenet_v2_features(0.75, 1).eval() if what == "backbone" else HFNet(DEFAULT_STUDENT_CONF).eval()
    x = torch.rand(1, 1, SIZE[1], SIZE[0])
    if backend == "torch-fused":  # what the hfnet extractor runs
        net = fuse_batchnorm(net).to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    if backend.startswith("torch"):

        def fn() -> None:
            with torch.inference_mode():
                net(x)
    else:
        if what == "backbone":
            buffer = io.BytesIO()
            torch.onnx.export(net, (x,), buffer, input_names=["image"], opset_version=17, dynamo=False)
            session = onnx_session(buffer.getvalue(), threads)
        else:
            session = onnx_session(hfnet_to_onnx(net), threads)
        x_np = x.numpy()

        def fn() -> None:
            session.run(None, {"image": x_np})
    times = _time(fn, warmup, runs)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    name = f"{'MobileNetV2-0.75 features[:18]' if what == 'backbone' else 'HF-Net forward'} ({backend})"
    queue.put(BenchResult("network", name, statistics.median(times), float(np.percentile(times, 90)), peak,
                          float("nan"), float("nan"), threads, SIZE))


def run_net(what: str, backend: str, threads: int, warmup: int, runs: int) -> BenchResult:
    """Time a network alone in a fresh process.

    Args:
        what: ``backbone`` or ``hfnet``.
        backend: ``torch`` (as built), ``torch-fused`` (BN folded, channels_last: what the ``hfnet``
            extractor runs) or ``ort``.
    """
    ctx = mp.get_context("spawn")
    queue: mp.Queue = ctx.Queue()
    proc = ctx.Process(target=_net_worker, args=(what, backend, threads, warmup, runs, queue))
    proc.start()
    proc.join()
    if proc.exitcode != 0 or queue.empty():
        raise RuntimeError(f"benchmark of {what} ({backend}) failed (exit code {proc.exitcode})")
    return queue.get()


def _ratios(results: list[BenchResult]) -> list[str]:
    by = {r.name: r.median_ms for r in results}
    lines = []
    for teacher in ("aliked-n16 (kornia forward)", "aliked-n16 (visloc sparse)"):
        for name, target in (("hfnet (torch eager)", 10), ("hfnet-onnx (onnxruntime)", 25)):
            ratio = by[teacher] / by[name]
            lines.append(f"{name}: 1/{ratio:.1f} of {teacher} ({by[name]:.1f} vs {by[teacher]:.1f} ms; "
                         f"target 1/{target}: {'met' if ratio >= target else 'NOT met'})")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=None, help="visloc HF-Net checkpoint")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="1 run, no warm-up, 2 network lines")
    args = parser.parse_args()
    from visloc.pipelines.export import CHECK_SIZES, export_hfnet
    from visloc.weights.hfnet import DEFAULT_WEIGHTS

    weights = args.weights or (DEFAULT_WEIGHTS if DEFAULT_WEIGHTS.is_file() else None)
    hf = [f"weights={weights}"] if weights else ["allow_random=true"]
    warmup, runs = (0, 1) if args.quick else (3, args.runs)
    common = {"size": SIZE, "threads": args.threads, "runs": runs, "warmup": warmup}
    nets = NETS_QUICK if args.quick else NETS
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export_hfnet(weights, Path(tmp) / "hfnet.onnx", allow_random=weights is None,
                                 check_sizes=((120, 160),) if args.quick else CHECK_SIZES).out
        results = [
            run_one("extract", "hfnet (torch eager)", extractor="hfnet", overrides=hf, **common),
            run_one("extract", "hfnet-onnx (onnxruntime)", extractor="hfnet-onnx", overrides=[*hf, f"onnx={onnx_path}"],
                    **common),
        ]
    results += [run_net(w, b, args.threads, warmup, runs) for w, b in nets]
    results += [
        run_one("extract", "aliked-n16 (visloc sparse)", extractor="aliked-n16", **common),
        run_one("extract", "aliked-n16 (kornia forward)", extractor="aliked-n16",
                overrides=["sparse_descriptors=false"],
                **{**common, "runs": runs if args.quick else max(3, runs // 4)}),
    ]
    machine = f"{machine_line(args.threads)}, load average {os.getloadavg()[0]:.1f}, weights {weights or 'random'}"
    print(machine)
    print(format_results(results))
    for line in _ratios(results):
        print(line)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"machine": machine, "results": [asdict(r) for r in results],
                                        "ratios": _ratios(results)}, indent=1))


if __name__ == "__main__":
    main()
