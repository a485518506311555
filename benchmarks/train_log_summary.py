"""Summarise a training run's TensorBoard scalars as a Markdown table (start vs end of the run).

Usage: python benchmarks/train_log_summary.py RUN_DIR [--window 100]
       python benchmarks/train_log_summary.py --quick [RUN_DIR]
For each scalar: the mean over the first and the last ``window`` steps logged, and the step range.
``--quick`` without RUN_DIR writes a tiny synthetic run (two scalars, 50 steps, ``loss/total`` going
from 1.0 to 0.02) in a temporary folder and summarises it with a window of 10.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def summarise(run_dir: Path, window: int) -> str:
    scalars: dict[str, dict[int, float]] = {}
    for events in sorted((run_dir / "tb").rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars.setdefault(tag, {}).update({e.step: e.value for e in acc.Scalars(tag)})
    lines = ["| scalar | first steps | mean | last steps | mean |", "|---|---|---:|---|---:|"]
    for tag, by_step in sorted(scalars.items()):
        steps = sorted(by_step)
        first = [s for s in steps if s < steps[0] + window]
        last = [s for s in steps if s > steps[-1] - window]
        m0, m1 = (sum(by_step[s] for s in ss) / len(ss) for ss in (first, last))
        lines.append(f"| {tag} | {first[0]}-{first[-1]} | {m0:.4f} | {last[0]}-{last[-1]} | {m1:.4f} |")
    return "\n".join(lines)


def synthetic_run(run_dir: Path, steps: int = 50) -> Path:
    """A run folder with ``tb/`` events of two scalars over ``steps`` steps, as training writes them."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(run_dir / "tb" / "version_0"))
    for step in range(steps):
        writer.add_scalar("loss/total", 1.0 - 0.98 * step / (steps - 1), step)
        writer.add_scalar("lr", 1e-3, step)
    writer.close()
    return run_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, nargs="?", default=None)
    parser.add_argument("--window", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="a synthetic 50-step run unless RUN_DIR, window 10")
    args = parser.parse_args()
    if args.run_dir is None and not args.quick:
        parser.error("RUN_DIR is required (or --quick)")
    with tempfile.TemporaryDirectory(prefix="visloc-train-log-") as tmp:
        run_dir = args.run_dir or synthetic_run(Path(tmp))
        print(summarise(run_dir, 10 if args.quick else args.window))


if __name__ == "__main__":
    main()
