"""Summarise a training run's TensorBoard scalars as a Markdown table (start vs end of the run).

Usage: python benchmarks/train_log_summary.py RUN_DIR [--window 100]
For each scalar: the mean over the first and the last ``window`` steps logged, and the step range.
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--window", type=int, default=100)
    args = parser.parse_args()
    print(summarise(args.run_dir, args.window))


if __name__ == "__main__":
    main()
