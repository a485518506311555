"""Event-VPR against frame baselines on one event drive: recall@N per condition, side by side, as Markdown.

Usage: python benchmarks/event_vpr_table.py DRIVE [--model CKPT] [--database NAME] [--frames hfnet-global,...]
                                            [--netvlad-weights FILE] [--set stride_m=2 ...] [--vocab-images 100]
                                            [--out outputs/event_vpr.md] [--json outputs/event_vpr.json]
                                            [--device cpu]

DRIVE is an event drive folder (``visloc data world event-drive --out DRIVE --split test``). The database is
``--database`` (default: the drive's first day traversal); every other traversal is a query traversal. Each
method is scored on the same places (``pipelines.evaluate_event_vpr``): ``events`` (the model on each place's
window) and the frame baselines on each place's nearest rendered frame:

- ``hfnet-global``: HF-Net's global head, the shipped default student (``weights/hfnet_default.pt``);
- ``hfnet-world``: the same head from the student trained on the built-in world (``weights/hfnet_world.pt``);
- ``vlad-aliked``: VLAD over ALIKED-n16 with a vocabulary learned from the database traversal's frames only;
- ``netvlad``: VGG16-NetVLAD from ``--netvlad-weights`` (skipped, with a line, without it).

The Markdown has one row per condition pair (``day->night``...: the pooled queries of that condition), one
``R@1 / R@5 / R@10`` cell per method, then the full table per traversal. Recall is over the queries with a
positive within 25 m (VG benchmark); the counts of queries and of those without a positive are in the full table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from visloc.conf import apply_overrides
from visloc.eval.event_vpr import RecallRow, markdown_table
from visloc.events.drive_dataset import PlaceWindows, read_event_drive
from visloc.io.atomic import atomic_write_text
from visloc.pipelines.evaluate_event_vpr import EVENTS, EventVPRReport, evaluate_event_vpr
from visloc.pipelines.frame_vpr import FrameMethod
from visloc.weights.hfnet import WORLD_WEIGHTS

METHODS = ("hfnet-global", "hfnet-world", "vlad-aliked", "netvlad")
CELL_NS = (1, 5, 10)


def frame_methods(names: list[str], netvlad_weights: str | None) -> list[FrameMethod]:
    """The frame baselines named in ``names`` (see the module docstring)."""
    out = []
    for name in names:
        if name == "hfnet-world":
            if not WORLD_WEIGHTS.is_file():  # without them it would be hfnet-global under another name
                print(f"hfnet-world: skipped, {WORLD_WEIGHTS} not found", file=sys.stderr)
                continue
            out.append(FrameMethod(name, "hfnet-global", (f"weights={WORLD_WEIGHTS}",)))
        elif name == "netvlad":
            out.append(FrameMethod(name, "netvlad", (f"weights={netvlad_weights}",) if netvlad_weights else ()))
        elif name in METHODS:
            out.append(FrameMethod(name, name))
        else:
            sys.exit(f"error: --frames: {name!r} is not one of {', '.join(METHODS)}")
    return out


def _cell(row: RecallRow | None) -> str:
    if row is None:
        return "-"
    return " / ".join("-" if row.result.recall[n] != row.result.recall[n] else f"{100 * row.result.recall[n]:.1f}"
                      for n in CELL_NS)


def side_by_side(report: EventVPRReport) -> str:
    """One row per condition pair, one ``R@1 / R@5 / R@10`` cell per method (percent)."""
    methods = list(dict.fromkeys(r.method for r in report.rows))
    pooled = [r for r in report.rows if r.pooled]
    pairs = list(dict.fromkeys((r.pair, r.queries) for r in pooled))
    head = ["database -> queries", "query traversals", *[f"{m} R@{'/'.join(map(str, CELL_NS))}" for m in methods]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for pair, queries in pairs:
        by = {r.method: r for r in pooled if (r.pair, r.queries) == (pair, queries)}
        lines.append("| " + " | ".join([pair, queries.replace("+", ", "), *[_cell(by.get(m)) for m in methods]]) + " |")
    return "\n".join(lines)


def markdown(report: EventVPRReport, seconds: float) -> str:
    """The Markdown section: what was run, the side-by-side table, the full table, skipped methods."""
    w = report.windows
    window = f"last {w.count} events" if w.kind == "count" else f"last {w.duration_us / 1000:g} ms"
    places = ", ".join(f"{k} {v}" for k, v in report.num_places.items())
    out = [f"Event drive `{report.drive}` ({report.split} split), model `{report.model.name}`; database "
           f"`{report.database}`, queries {', '.join(f'`{q}`' for q in report.queries)}. A place every "
           f"{w.stride_m:g} m of travel ({places} places), its window the {window}; frames: the rendered frame "
           f"nearest in time. Positives within {report.protocol.radius_m:g} m, exact L2 neighbours; recall in % "
           f"over the queries with a positive ({seconds:.0f} s on this machine).", ""]
    if report.split != "test":
        out += [f"**Not a held-out evaluation**: a {report.split}-split drive.", ""]
    out += [side_by_side(report), "", "<details><summary>per traversal</summary>", "",
            markdown_table(report.rows, report.protocol.ns), "", "</details>"]
    if report.skipped:
        out += [""] + [f"- {line}" for line in report.skipped]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, evaluate, print and write the Markdown (and the JSON)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("drive", type=Path, help="event drive folder (visloc data world event-drive)")
    ap.add_argument("--model", type=Path, help="visloc event-vpr checkpoint (default: the shipped event-vpr-world)")
    ap.add_argument("--database", help="database traversal (default: the first day traversal)")
    ap.add_argument("--frames", default=",".join(METHODS), help="frame baselines, comma separated ('' for none)")
    ap.add_argument("--netvlad-weights", help="NetVLAD weights (*_struct.mat or pytorch-NetVlad checkpoint)")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="PlaceWindows override key=value")
    ap.add_argument("--vocab-images", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--work", type=Path, help="keep learned vocabularies here")
    ap.add_argument("--out", type=Path, default=Path("outputs/event_vpr.md"))
    ap.add_argument("--json", type=Path, help="also write the JSON report here")
    ap.add_argument("--device", default=None)
    args = ap.parse_args(argv)
    drive = read_event_drive(args.drive)
    names = list(drive.traversals)
    database = args.database or next((n for n in names if drive[n].condition == "day"), names[0])
    queries = [drive.root / n for n in names if n != database]
    windows = apply_overrides(PlaceWindows(), args.sets)
    start = time.perf_counter()
    report = evaluate_event_vpr(args.model, drive.root / database, queries, windows=windows,
                                frames=frame_methods([n for n in args.frames.split(",") if n], args.netvlad_weights),
                                batch_size=args.batch_size, vocab_images=args.vocab_images, work_dir=args.work,
                                device=args.device, progress=True)
    text = markdown(report, time.perf_counter() - start)
    print(text)
    atomic_write_text(args.out, text)
    print(f"markdown -> {args.out}")
    if args.json is not None:
        report.write(args.json)
        print(f"json -> {args.json}")
    return 0 if any(r.method == EVENTS for r in report.rows) else 1


if __name__ == "__main__":
    sys.exit(main())
