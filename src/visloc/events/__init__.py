"""Event cameras: the ``EventStream`` contract, windows over it, and dense representations.

- ``stream``: ``EventStream`` (sorted int64 µs from a stated origin, ``x``, ``y``, ``p`` in {-1, +1});
- ``windows``: fixed-count, fixed-duration and fixed-distance windows (``WindowSet``);
- ``representations``: voxel grid, histogram, time surface (``REPRESENTATIONS``, kind ``events``);
  imported on demand (it imports torch and registers its entries);
- ``est``: the learnable EST layer (an ``nn.Module``), registered as ``est`` beside them;
- ``vpr``: representation + Event-VPR network as one module over event windows.
- ``simulator``: an ESIM-style simulator, frames with timestamps -> ``EventStream`` chunks (``EsimConf``,
  ``EventSimulator.feed``, ``simulate_frames``), with v2e's leak and shot noise (``sim_noise``);
- ``frame_sources``: frames + timestamps from an image folder or a video (OpenCV), and the motion check;
- ``world_drive``: a world ``drive`` traversal rendered at an adaptive rate (exact flow) into the simulator;
- ``drive_dataset``: an event drive folder for place recognition (places along the route, event windows);
- ``io``: readers and writers of event files (MVSEC, visloc HDF5, text, npy windows, parquet, NMEA GPS).
"""

from visloc.events.stream import EventStream, EventStreamError, TorchEvents
from visloc.events.windows import (
    SkippedWindow,
    Trajectory,
    Window,
    WindowSet,
    count_windows,
    distance_windows,
    time_windows,
)

__all__ = ["EventStream", "EventStreamError", "SkippedWindow", "TorchEvents", "Trajectory", "Window", "WindowSet",
           "count_windows", "distance_windows", "time_windows"]
