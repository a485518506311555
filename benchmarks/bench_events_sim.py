"""Event simulation speed at 346 x 260 on this CPU: the ESIM core alone, and a world drive at its adaptive rate.

Usage: python benchmarks/bench_events_sim.py [--seconds 3] [--threads 1] [--out outputs/bench_events_sim.json]

Rows, measured in one run on the same drive (a one-traversal world ``drive`` folder generated into a
temporary folder: a ~95 m route at 346 x 260, the camera of ``DriveConf``):

- ``esim``: ``EventSimulator.feed`` alone on frames rendered beforehand (every 2nd pose, 500 Hz), with and
  without the noise models (leak and shot noise on / off); frames per second and events per second;
- ``world``: ``WorldEventSource`` (render at the exact-flow adaptive rate, light, ESIM) at ``max_flow_px`` 1.0
  and 0.5: rendered frames per second of wall time, events per second, and the real-time factor (seconds
  of drive simulated per second of wall time).

The same ``--seconds`` of drive (taken where the vehicle moves fastest) for every row. Prints one JSON line
per row, the machine load (``os.getloadavg``) before and after, and a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from visloc.data.world import run_generator
from visloc.events.simulator import EsimConf, EventSimulator
from visloc.events.world_drive import WorldEventsConf, WorldEventSource, read_traversal


def _drive(work: Path) -> Path:
    out = work / "drive"
    run_generator("drive", out, split="train", overrides=["route_length_m=20", "render_hz=1",
                                                          "traversals=[{name: day1, condition: day}]"],
                  progress=False)
    return out


def _esim_rows(source: WorldEventSource, start: int, stop: int) -> list[dict]:
    times = [int(source.traversal.t_us[i]) for i in range(start, stop, 2)]
    frames = [(source.light(t)[0], t) for t in times]
    rows = []
    for label, conf in (("esim, leak + shot noise", EsimConf()),
                        ("esim, no noise", EsimConf(leak_rate_hz=0.0, shot_noise_rate_hz=0.0))):
        sim = EventSimulator(source.traversal.size, conf)
        sim.feed(*frames[0])
        t0, events = time.perf_counter(), 0
        for frame, t in frames[1:]:
            events += len(sim.feed(frame, t))
        wall = time.perf_counter() - t0
        rows.append({"row": label, "frames": len(frames) - 1, "events": events, "wall_s": round(wall, 2),
                     "frames_per_s": round((len(frames) - 1) / wall, 1), "events_per_s": round(events / wall)})
    return rows


def _world_rows(root: Path, start: int, stop: int, drive_s: float) -> list[dict]:
    rows = []
    for flow in (1.0, 0.5):
        source = WorldEventSource(read_traversal(root, "day1"), WorldEventsConf(max_flow_px=flow))
        t0 = time.perf_counter()
        for _ in source.chunks(start, stop):
            pass
        wall = time.perf_counter() - t0
        s = source.stats
        rows.append({"row": f"world drive, max_flow_px {flow}", "frames": s.frames, "events": s.events,
                     "wall_s": round(wall, 2), "frames_per_s": round(s.frames / wall, 1),
                     "events_per_s": round(s.events / wall), "rendered_per_drive_s": round(s.frames / drive_s),
                     "realtime_factor": round(drive_s / wall, 3), "max_flow_seen_px": round(s.flow_checked, 3)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="seconds of drive per row")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("outputs/bench_events_sim.json"))
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        root = _drive(Path(tmp))
        tr = read_traversal(root, "day1")
        n = int(round(args.seconds * tr.pose_hz))
        speed = np.linalg.norm(np.diff(tr.centre, axis=0), axis=1)
        start = int(np.clip(np.argmax(np.convolve(speed, np.ones(n), "valid")), 0, len(tr.t_us) - n - 1))
        warm = WorldEventSource(tr, WorldEventsConf())
        for i in range(start, start + n, max(1, n // 20)):  # warm the texture cache for every row
            warm.light(int(tr.t_us[i]))
        rows = _esim_rows(warm, start, start + n) + _world_rows(root, start, start + n, args.seconds)
    load1 = os.getloadavg()
    meta = {"sensor": "346x260", "drive_s": args.seconds, "threads": args.threads,
            "loadavg_before": [round(v, 2) for v in load0], "loadavg_after": [round(v, 2) for v in load1]}
    for r in rows:
        print(json.dumps(r))
    print(json.dumps(meta))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print("\n| row | frames/s | events/s | frames per s of drive | real-time factor |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['row']} | {r['frames_per_s']:.0f} | {r['events_per_s'] / 1e6:.2f} M | "
              f"{r.get('rendered_per_drive_s', '-')} | {r.get('realtime_factor', '-')} |")


if __name__ == "__main__":
    main()
