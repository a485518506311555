"""Event files: one reader per format, visloc's own writer, and ``read_events`` that tells them apart.

- ``dispatch``: ``read_events`` / ``iter_events`` / ``describe_events`` / ``detect_format`` (``FORMATS``);
- ``h5``: visloc's chunked, compressed HDF5 (``EventWriter``, ``write_events``; lazy ``VislocEvents``);
- ``mvsec``: MVSEC ``<seq>_data.hdf5`` events (lazy ``MvsecEvents``), ``<seq>_gt.hdf5`` poses;
- ``text``: ``t x y p`` lines (rpg, ESIM, rpg_e2vid's ``W H`` header), streamed; ``write_text_events``;
- ``npy``: the seed's ``<timestamp>.npy`` windows;
- ``parquet``: Brisbane-Event-VPR's parquet (``pyarrow``, imported on use);
- ``nmea``: GGA / RMC GPS logs -> ``GpsFixes`` -> local metres and a ``Trajectory``;
- ``hdf5``, ``common``: the lazy-reader base, block search, chunk checks and ``EventFileError``.

Every bad input raises ``EventFileError`` (a ``VislocError``): one line naming the file (and the line
or row) and the problem.
"""

from visloc.events.io.common import EventFileError
from visloc.events.io.dispatch import FORMATS, EventFileInfo, describe_events, detect_format, iter_events, read_events
from visloc.events.io.h5 import EventWriter, VislocEvents, write_events
from visloc.events.io.mvsec import MVSEC_SENSOR, MvsecEvents, read_mvsec_poses, read_mvsec_trajectory
from visloc.events.io.nmea import GpsFixes, read_nmea
from visloc.events.io.npy import NpyWindow, read_npy_events, read_npy_folder, read_npy_windows
from visloc.events.io.parquet import BRISBANE_SENSOR, iter_parquet_events, read_parquet_events
from visloc.events.io.text import iter_text_events, read_text_events, read_text_header, write_text_events

__all__ = ["BRISBANE_SENSOR", "FORMATS", "MVSEC_SENSOR", "EventFileError", "EventFileInfo", "EventWriter", "GpsFixes",
           "MvsecEvents", "NpyWindow", "VislocEvents", "describe_events", "detect_format", "iter_events",
           "iter_parquet_events", "iter_text_events", "read_events", "read_mvsec_poses", "read_mvsec_trajectory",
           "read_nmea", "read_npy_events", "read_npy_folder", "read_npy_windows", "read_parquet_events",
           "read_text_events", "read_text_header", "write_events", "write_text_events"]
