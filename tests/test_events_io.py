"""Event file readers and writers: exact round trips per format, lazy and chunked reads, NMEA, bad input, atomicity."""

from __future__ import annotations

import datetime as dt
import math

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from visloc.errors import VislocError
from visloc.events import EventStream
from visloc.events.io import (
    FORMATS,
    EventFileError,
    EventFileInfo,
    EventWriter,
    MvsecEvents,
    VislocEvents,
    describe_events,
    detect_format,
    read_events,
    read_mvsec_trajectory,
    read_nmea,
    read_npy_folder,
    read_npy_windows,
    read_parquet_events,
    read_text_events,
    write_events,
    write_text_events,
)
from visloc.events.io import hdf5 as io_hdf5
from visloc.events.io.hdf5 import searchsorted_blocks
from visloc.events.io.text import iter_text_events

EPOCH_US = 1_504_645_177_000_000  # an MVSEC-like absolute ROS time (2017), µs
SIZE = (346, 260)


def _stream(n: int = 200, seed: int = 0, origin_us: int = EPOCH_US, repeats: bool = True) -> EventStream:
    """``n`` events over ~2 s from ``origin_us`` (repeated timestamps if ``repeats``), opposite corner pixels."""
    rng = np.random.default_rng(seed)
    t = np.sort(rng.integers(0, 2_000_000, n)) if not repeats else np.sort(rng.integers(0, 2_000_000, n) // 50 * 50)
    t -= t[0]  # the first event at the origin, as readers default to
    x, y = rng.integers(0, SIZE[0], n), rng.integers(0, SIZE[1], n)
    x[:2], y[:2] = (0, SIZE[0] - 1), (0, SIZE[1] - 1)
    return EventStream.from_arrays(t + origin_us, x, y, rng.choice([-1, 1], n), SIZE, origin_us=origin_us)


def _same(a: EventStream, b: EventStream) -> None:
    assert (a.sensor_size, a.origin_us, len(a)) == (b.sensor_size, b.origin_us, len(b))
    for name in ("t", "x", "y", "p"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name


@pytest.fixture
def stream() -> EventStream:
    return _stream()


def _mvsec(path, s: EventStream, camera: str = "left") -> None:
    """The MVSEC converter's layout: float64 [N, 4] x, y, t (absolute s), p in {-1, +1}."""
    with h5py.File(path, "w") as f:
        t_s = (s.t + s.origin_us) / 1e6
        f[f"davis/{camera}/events"] = np.stack([s.x, s.y, t_s, s.p], 1).astype(np.float64)
        f[f"davis/{camera}/imu"] = np.zeros((3, 6))


# --- visloc's HDF5 -------------------------------------------------------------------------------------------


def test_visloc_h5_streamed_round_trip_is_exact(tmp_path, stream):
    out = tmp_path / "ev.h5"
    with EventWriter(out, SIZE, stream.origin_us, chunk_events=16) as w:
        w.append(stream.slice_index(0, 70))
        w.append(stream.slice_index(70, 70))  # empty
        w.append(stream.slice_index(70, 200).shifted(-1000))  # another origin, same absolute times
    _same(read_events(out), stream)
    with h5py.File(out) as f:
        assert f.attrs["format"] == "visloc-events" and f.attrs["format_version"] == 1
        assert list(f.attrs["sensor_size"]) == [346, 260] and f.attrs["origin_us"] == stream.origin_us
        ds = f["events/t"]
        assert (ds.dtype, f["events/x"].dtype, f["events/p"].dtype) == (np.int64, np.uint16, np.int8)
        assert ds.chunks == (16,) and ds.compression == "gzip" and ds.maxshape == (None,)
    assert detect_format(out) == "visloc-h5"


def test_visloc_h5_lazy_time_range_equals_slice_of_full_read(tmp_path, stream, monkeypatch):
    out = write_events(tmp_path / "ev.h5", stream, chunk_events=8)
    monkeypatch.setattr(io_hdf5, "SEARCH_BLOCK", 4)  # force the bisection through many single-row reads
    t = stream.t
    ranges = [(0, 1), (int(t[5]), int(t[5])), (int(t[10]), int(t[120])), (-5, int(t[-1]) + 1), (int(t[-1]) + 1, 10**12)]
    with VislocEvents(out) as r:
        assert len(r) == len(stream) and r.time_span_us() == (int(t[0]), int(t[-1]))
        for t0, t1 in ranges:
            assert r.index_range(t0, t1) == stream.index_range(t0, t1)
            _same(r.read_time(t0, t1), stream.slice_time(t0, t1))
        _same(r.read_index(13, 101), stream.slice_index(13, 101))


def test_chunks_cross_boundaries_and_a_time_range(tmp_path, stream):
    out = write_events(tmp_path / "ev.h5", stream, chunk_events=8)
    with VislocEvents(out) as r:
        chunks = list(r.chunks(7))
        assert [len(c) for c in chunks] == [7] * 28 + [4]
        _same(read_events(out), r.read_all(7))
        t0, t1 = int(stream.t[33]), int(stream.t[150])
        part = list(r.chunks(10, t0, t1))
        joined = np.concatenate([c.t for c in part])
        assert np.array_equal(joined, stream.slice_time(t0, t1).t)


def test_searchsorted_blocks_matches_numpy():
    t = np.repeat(np.arange(0, 60, 3), [1, 4, 1, 7, 1, 1, 2, 1, 1, 1, 3, 1, 1, 1, 1, 2, 1, 1, 5, 1])
    for side in ("left", "right"):
        for v in range(-2, 64):
            for block in (1, 2, 5, 1000):
                got = searchsorted_blocks(lambda a, b: t[a:b], len(t), v, side, block=block)
                assert got == int(np.searchsorted(t, v, side=side)), (v, side, block)


# --- MVSEC ---------------------------------------------------------------------------------------------------


def test_mvsec_round_trip_lazy_range_and_trajectory(tmp_path, stream, monkeypatch):
    data, gt = tmp_path / "outdoor_day1_data.hdf5", tmp_path / "outdoor_day1_gt.hdf5"
    _mvsec(data, stream)
    _same(read_events(data), stream)  # absolute float seconds -> exact µs
    monkeypatch.setattr(io_hdf5, "SEARCH_BLOCK", 4)
    with MvsecEvents(data) as r:
        assert r.origin_us == stream.origin_us and r.sensor_size == (346, 260)
        t0, t1 = int(stream.t[20]), int(stream.t[170])
        _same(r.read_time(t0, t1), stream.slice_time(t0, t1))
        _same(r.read_all(size=9), stream)
    pose = np.tile(np.eye(4), (3, 1, 1))
    pose[:, :3, 3] = [[0.0, 0.0, 1.0], [3.0, 4.0, 2.0], [3.0, 10.0, 9.0]]
    with h5py.File(gt, "w") as f:
        f["davis/left/pose"] = pose
        f["davis/left/pose_ts"] = (EPOCH_US + np.array([0, 500_000, 1_000_000])) / 1e6
    traj = read_mvsec_trajectory(gt, stream.origin_us)
    assert traj.times_us.tolist() == [0, 500_000, 1_000_000]
    assert traj.positions.tolist() == [[0.0, 0.0], [3.0, 4.0], [3.0, 10.0]] and traj.distance[-1] == 11.0
    with pytest.raises(EventFileError, match="ground-truth file"):
        read_events(gt)


def test_mvsec_missing_keys_are_named(tmp_path, stream):
    data = tmp_path / "x_data.hdf5"
    _mvsec(data, stream, camera="right")
    with pytest.raises(EventFileError, match=r"x_data.hdf5: no dataset davis/left/events \(keys under /davis: right\)"):
        MvsecEvents(data)
    assert len(MvsecEvents(data, camera="right")) == len(stream)
    bare = tmp_path / "bare.hdf5"
    with h5py.File(bare, "w") as f:
        f["frames"] = np.zeros(2)
    with pytest.raises(EventFileError, match=r"bare.hdf5: no dataset davis/left/events \(keys under /: frames\)"):
        MvsecEvents(bare)
    gt = tmp_path / "x_gt.hdf5"
    with h5py.File(gt, "w") as f:
        f["davis/left/pose"] = np.tile(np.eye(4), (2, 1, 1))
        f["davis/left/odometry_ts"] = np.zeros(2)
    with pytest.raises(EventFileError, match=r"x_gt.hdf5: no dataset davis/left/pose_ts \(keys under /davis/left: "
                                             r"odometry_ts, pose\)"):
        read_mvsec_trajectory(gt, 0)


# --- text ----------------------------------------------------------------------------------------------------


def test_text_round_trip_with_header_and_chunks(tmp_path, stream):
    out = write_text_events(tmp_path / "events.txt", stream)
    lines = out.read_text().splitlines()
    assert lines[0] == "346 260" and lines[1].split()[1:] == [str(stream.x[0]), str(stream.y[0]),
                                                              "1" if stream.p[0] > 0 else "0"]
    assert lines[1].split()[0] == f"{(EPOCH_US + int(stream.t[0])) // 10**6}.{(int(stream.t[0]) % 10**6):06d}"
    _same(read_events(out), stream)
    chunks = list(iter_text_events(out, chunk_lines=7))
    assert [len(c) for c in chunks] == [7] * 28 + [4]
    _same(read_text_events(out, chunk_lines=7), stream)


def test_text_without_header_pm1_comments_and_us(tmp_path):
    src = tmp_path / "ev.txt"
    src.write_text("# t x y p\n0.5 1 2 -1\n\n0.75 0 0 1\n")
    s = read_text_events(src, (3, 3))
    assert s.t.tolist() == [0, 250_000] and s.origin_us == 500_000 and s.p.tolist() == [-1, 1]
    with pytest.raises(EventFileError, match=r"ev.txt: no 'W H' header line; give the sensor size"):
        read_text_events(src)
    us = tmp_path / "us.txt"
    us.write_text("4 2\n10 0 0 0\n12 3 1 1\n")
    assert read_text_events(us, t_unit="us", origin_us=0).t.tolist() == [10, 12]
    with pytest.raises(EventFileError, match="header says the sensor is 4 x 2, sensor_size says 5 x 2"):
        read_text_events(us, (5, 2), t_unit="us")


# --- npy windows ---------------------------------------------------------------------------------------------


def test_npy_windows_share_an_origin_and_join(tmp_path, stream):
    folder = tmp_path / "windows"
    folder.mkdir()
    bounds = [0, 60, 130, 200]
    for a, b in zip(bounds, bounds[1:], strict=False):
        part = stream.slice_index(a, b)
        t_s = (part.t + part.origin_us) / 1e6
        rows = np.stack([t_s, part.x, part.y, (part.p > 0).astype(np.float64)], 1)  # p in {0, 1}
        np.save(folder / f"{t_s[0]:.6f}.npy", rows)
    windows = read_npy_windows(folder, SIZE)
    assert [len(w.stream) for w in windows] == [60, 70, 70]
    assert [w.name_us for w in windows] == [EPOCH_US + int(stream.t[i]) for i in bounds[:-1]]
    assert {w.stream.origin_us for w in windows} == {stream.origin_us}
    _same(read_npy_folder(folder, SIZE), stream)
    _same(read_events(folder, sensor_size=SIZE), stream)
    _same(read_events(windows[1].path, sensor_size=SIZE, origin_us=stream.origin_us), stream.slice_index(60, 130))


def test_npy_refuses_objects_transposes_and_odd_names(tmp_path):
    obj = tmp_path / "1.0.npy"
    np.save(obj, np.array([[0.0, 1, 1, 1], None], dtype=object), allow_pickle=True)
    with pytest.raises(EventFileError, match=r"1.0.npy: not a .npy array of events \(Object arrays"):
        read_events(obj, sensor_size=SIZE)
    tr = tmp_path / "2.0.npy"
    np.save(tr, np.zeros((4, 9)))
    with pytest.raises(EventFileError, match=r"expected \[N, 4\] rows \(t, x, y, p\), got shape \(4, 9\) \(transposed"):
        read_events(tr, sensor_size=SIZE)
    unsorted = tmp_path / "3.0.npy"
    np.save(unsorted, np.array([[3.0, 0, 0, 1], [3.5, 1, 1, 0], [3.25, 2, 2, 1]]))
    with pytest.raises(EventFileError, match=r"3.0.npy \(row 2\): EventStream.t: not sorted"):
        read_events(unsorted, sensor_size=SIZE)
    (tmp_path / "win_a.npy").write_bytes(b"")
    with pytest.raises(EventFileError, match="win_a.npy: the name is not a timestamp in s"):
        read_npy_windows(tmp_path, SIZE)
    with pytest.raises(EventFileError, match="do not record the sensor size"):
        read_events(tr)


# --- parquet -------------------------------------------------------------------------------------------------


def test_parquet_round_trip_time_range_across_row_groups(tmp_path, stream):
    out = tmp_path / "dvs_vpr_2020-04-21-17-03-03.parquet"
    table = pa.table({"t": stream.t + stream.origin_us, "x": stream.x.astype(np.int16), "y": stream.y.astype(np.int16),
                      "p": (stream.p > 0).astype(np.int8)})  # Brisbane: absolute µs, p in {0, 1}
    pq.write_table(table, out, row_group_size=32)
    _same(read_events(out), stream)
    _same(read_parquet_events(out, batch_size=5), stream)
    t0, t1 = int(stream.t[40]), int(stream.t[150])
    _same(read_parquet_events(out, t0_us=t0, t1_us=t1, batch_size=9), stream.slice_time(t0, t1))
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"t": [1, 2], "x": [0, 0], "y": [0, 0], "polarity": [0, 1]}), bad)
    with pytest.raises(EventFileError, match=r"bad.parquet: no column p \(columns: t, x, y, polarity\)"):
        read_events(bad)


# --- NMEA ----------------------------------------------------------------------------------------------------


def _nmea(body: str) -> str:
    cs = 0
    for c in body:
        cs ^= ord(c)
    return f"${body}*{cs:02X}"


def test_nmea_fixes_exact_degrees_epoch_times_and_metres(tmp_path):
    log = tmp_path / "20200421_172500.nmea"
    log.write_text("\n".join([
        _nmea("GPGSV,3,1,11,01,02,003,04"),
        _nmea("GPGGA,073015.25,2728.18800,S,15301.50600,E,1,08,0.9,20.1,M,39.0,M,,"),
        _nmea("GPRMC,073015.25,A,2728.18800,S,15301.50600,E,10.1,0.0,210420,,,A"),  # same fix: counted once
        _nmea("GPGGA,073016.25,2728.24800,S,15301.50600,E,1,08,0.9,20.1,M,39.0,M,,"),  # 0.001 deg south
        "$GPGGA,073017.25,2728.30800,S,15301.50600,E,1,08,0.9,20.1,M,39.0,M,,*00",  # wrong checksum: skipped
        _nmea("GNRMC,073017.25,A,2728.24800,S,15301.56600,E,10.1,90.0,210420,,,A"),  # 0.001 deg east
        _nmea("GPGGA,073018.25,,,,,0,00,,,M,,M,,"),  # no fix
    ]) + "\n")
    fixes = read_nmea(log)
    assert fixes.dated and len(fixes) == 3
    assert np.allclose(fixes.lat_deg, [-27.4698, -27.4708, -27.4708], atol=1e-6, rtol=0)
    assert np.allclose(fixes.lon_deg, [153.0251, 153.0251, 153.0261], atol=1e-6, rtol=0)
    t0 = (dt.datetime(2020, 4, 21, 7, 30, 15, 250_000) - dt.datetime(1970, 1, 1)) // dt.timedelta(microseconds=1)
    assert fixes.times_us.tolist() == [t0, t0 + 1_000_000, t0 + 2_000_000]
    # WGS84 meridian and prime-vertical radii at the mean latitude give the metres of 0.001 deg
    a, e2 = 6378137.0, 0.00669437999014
    phi = math.radians(-27.4703)
    meridian = a * (1 - e2) / (1 - e2 * math.sin(phi) ** 2) ** 1.5 * math.radians(0.001)
    east = a / math.sqrt(1 - e2 * math.sin(math.radians(-27.4708)) ** 2) * math.cos(math.radians(-27.4708)) \
        * math.radians(0.001)
    pos = fixes.positions_m()
    assert pos[0].tolist() == [0.0, 0.0]
    assert abs(pos[1, 1] + meridian) < 1e-3 and abs(pos[1, 0]) < 1e-3 and 110.0 < meridian < 111.5
    assert abs((pos[2, 0] - pos[1, 0]) - east) < 1e-3
    traj = fixes.trajectory(t0 - 5_000_000, clock_offset_us=250_000)
    assert traj.times_us.tolist() == [5_250_000, 6_250_000, 7_250_000]
    assert np.allclose(traj.positions, pos)


def test_nmea_gga_only_date_argument_and_midnight(tmp_path):
    log = tmp_path / "gga.nmea"
    log.write_text("\n".join(["12.5 " + _nmea("GPGGA,235959.50,4807.03800,N,01131.00000,W,1,08,0.9,545.4,M,46.9,M,,"),
                              _nmea("GPGGA,000000.50,4807.03800,N,01131.00000,W,1,08,0.9,545.4,M,46.9,M,,")]) + "\n")
    undated = read_nmea(log)
    assert not undated.dated and undated.times_us.tolist() == [86_399_500_000, 86_400_500_000]
    assert np.allclose(undated.lat_deg, 48.1173, atol=1e-6) and np.allclose(undated.lon_deg, -11.516666667, atol=1e-6)
    dated = read_nmea(log, date=dt.date(1970, 1, 2))
    assert dated.dated and dated.times_us.tolist() == [2 * 86_400_000_000 - 500_000, 2 * 86_400_000_000 + 500_000]


def test_nmea_bad_input(tmp_path):
    log = tmp_path / "bad.nmea"
    log.write_text(_nmea("GPGGA,073015.25,2728.18800,S,15301.50600,E,1,08,0.9,20.1,M,39.0,M,,") + "\n"
                   + _nmea("GPGGA,073016.25,27x8.24800,S,15301.50600,E,1,08,0.9,20.1,M,39.0,M,,") + "\n")
    with pytest.raises(EventFileError, match=r"bad.nmea:2: malformed \$GPGGA sentence: latitude '27x8.24800'"):
        read_nmea(log)
    log.write_bytes(b"$GPGGA,0\xff\n")
    with pytest.raises(EventFileError, match=r"bad.nmea:1: not UTF-8 text \(byte 0xff"):
        read_nmea(log)
    log.write_text(_nmea("GPGSA,A,3,04,05,,09,12,,,24,,,,,2.5,1.3,2.1") + "\n")
    with pytest.raises(EventFileError, match="bad.nmea: no GGA or RMC position fix"):
        read_nmea(log)
    log.write_text(_nmea("GPGGA,073015.25,2728.18800,S,15301.50600,E,1,08,0.9,20.1,M,39.0,M,,") + "\n"
                   + _nmea("GPGGA,073014.25,2728.18800,S,15301.50600,E,1,08,0.9,20.1,M,39.0,M,,") + "\n")
    with pytest.raises(EventFileError, match="bad.nmea:2: time goes back"):
        read_nmea(log)


# --- bad input -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "message"), [
    ("4 2\n0.1 0 0 1\n0.3 1 1 0\n0.2 2 1 1\n", r"ev.txt:4: EventStream.t: not sorted"),
    ("4 2\n0.1 0 0 1\n0.2 4 1 0\n", r"ev.txt:3: EventStream.x: values in \[0, 4\] outside the sensor's \[0, 4\)"),
    ("4 2\n0.1 0 0 1\n0.2 1 -1 0\n", r"ev.txt:3: EventStream.y"),
    ("4 2\n0.1 0 0 1\n0.2 1 1 2\n", r"ev.txt:3: polarity 2.0 is neither in \{-1, \+1\} nor in \{0, 1\}"),
    ("4 2\n0.1 0 0 0\n0.2 1 1 -1\n", r"ev.txt:3: polarity -1.0 after \{0, 1\} polarities \(two encodings mixed\)"),
    ("4 2\n0.1 0 0 1\n0.2 1 1\n", r"ev.txt:3: expected 't x y p' \(4 numbers\), got '0.2 1 1'"),
    ("4 2\n0.1 0 0 1\n0.2 1 one 1\n", r"ev.txt:3: expected 't x y p' \(4 numbers\), got '0.2 1 one 1'"),
    ("4 2\n0.1 0 0 1\n0.2 1.5 1 1\n", r"ev.txt:3: EventStream.x: float values must be integral"),
])
def test_text_bad_input_names_file_and_line(tmp_path, body, message):
    src = tmp_path / "ev.txt"
    src.write_text(body)
    with pytest.raises(EventFileError, match=message) as info:
        read_events(src)
    assert isinstance(info.value, VislocError) and "\n" not in str(info.value)


def test_bad_input_across_chunks_and_encodings(tmp_path):
    src = tmp_path / "ev.txt"
    src.write_text("4 2\n0.1 0 0 1\n0.2 1 1 0\n0.3 1 1 1\n0.15 1 1 0\n")
    with pytest.raises(EventFileError, match=r"ev.txt:5: EventStream.t: not sorted \(t = 50000 µs after 200000"):
        read_text_events(src, chunk_lines=3)
    src.write_text("4 2\n0.1 0 0 0\n0.2 1 1 1\n0.3 1 1 -1\n")
    with pytest.raises(EventFileError, match=r"ev.txt:4: polarity -1.0 after \{0, 1\} polarities"):
        read_text_events(src, chunk_lines=2)
    src.write_bytes(b"4 2\n0.1 0 0 1\n0.2 1 \xe9 1\n")
    with pytest.raises(EventFileError, match=r"ev.txt:3: not UTF-8 text \(byte 0xe9 at column 7\)"):
        read_events(src)


def test_hdf5_bad_input(tmp_path, stream):
    data = tmp_path / "cut_data.hdf5"
    _mvsec(data, stream)
    whole = data.read_bytes()
    data.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(EventFileError, match=r"cut_data.hdf5: not a readable HDF5 file \(.*truncated"):
        read_events(data)
    bad = tmp_path / "bad_data.hdf5"
    s = _stream(20)
    with h5py.File(bad, "w") as f:
        rows = np.stack([s.x, s.y, (s.t + s.origin_us) / 1e6, s.p], 1).astype(np.float64)
        rows[7, 0] = 346
        rows[9, 3] = 0.0
        f["davis/left/events"] = rows
    with pytest.raises(EventFileError, match=r"bad_data.hdf5 \(event 9\): EventStream.p: 'pm1' polarities"):
        read_events(bad)  # from_arrays checks polarities before the sensor bounds
    with pytest.raises(EventFileError, match=r"bad_data.hdf5 \(event 7\): EventStream.x: values in \[0, 346\]"):
        MvsecEvents(bad).read_index(0, 9)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["frames"] = np.zeros(3)
    with pytest.raises(EventFileError, match=r"other.h5: an HDF5 file of no known event layout \(top-level keys: "
                                             r"frames\); known: visloc-h5"):
        read_events(other)
    newer = write_events(tmp_path / "new.h5", stream)
    with h5py.File(newer, "a") as f:
        f.attrs["format_version"] = 2
    with pytest.raises(EventFileError, match=r"new.h5: format_version 2; this visloc reads visloc-events versions 1 "):
        read_events(newer)


def test_lazy_chunks_check_time_within_and_across_chunks(tmp_path, stream):
    out = write_events(tmp_path / "ev.h5", stream)
    with h5py.File(out, "a") as f:
        t = f["events/t"][:]
        f["events/t"][100:] = t[100:] - 10_000_000  # a foreign writer's file: time jumps back at event 100
    with VislocEvents(out) as r:
        with pytest.raises(EventFileError, match=r"ev.h5 \(events 90..119\): EventStream.t: not sorted"):
            list(r.chunks(30))
        with pytest.raises(EventFileError, match=r"ev.h5 \(event 100\): EventStream.t: not sorted"):
            list(r.chunks(20))  # the jump is at a chunk boundary


def test_unknown_format_lists_the_known_ones(tmp_path):
    blob = tmp_path / "recording.bin"
    blob.write_bytes(b"\x00\x01binary")
    with pytest.raises(EventFileError, match=r"recording.bin: cannot tell the event format \(suffix .bin\); known: ") \
            as info:
        read_events(blob)
    assert all(name in str(info.value) for name in FORMATS)
    with pytest.raises(EventFileError, match="missing.txt: event file not found"):
        read_events(tmp_path / "missing.txt")


def test_formats_are_detected_by_content(tmp_path, stream):
    h5 = write_events(tmp_path / "a.dat5", stream)
    log = write_text_events(tmp_path / "a.log", stream)
    assert detect_format(h5) == "visloc-h5" and detect_format(log) == "text"
    info = describe_events(h5)
    assert (info.format, info.count, info.sensor_size, info.origin_us) == ("visloc-h5", 200, SIZE, EPOCH_US)
    assert info.t_last_us - info.t_first_us == stream.duration_us
    assert describe_events(log) == EventFileInfo("text", 200, SIZE, EPOCH_US, info.t_first_us, info.t_last_us)


# --- atomic writes -------------------------------------------------------------------------------------------


def test_a_failure_mid_write_leaves_no_file(tmp_path, stream):
    out = tmp_path / "ev.h5"
    with pytest.raises(RuntimeError, match="boom"), EventWriter(out, SIZE, stream.origin_us) as w:
        w.append(stream.slice_index(0, 100))
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="before the last written"), EventWriter(out, SIZE, stream.origin_us) as w:
        w.append(stream.slice_index(100, 200))
        w.append(stream.slice_index(0, 100))  # out of order: refused, nothing published
    assert list(tmp_path.iterdir()) == []
    write_events(out, stream)
    before = out.read_bytes()
    with pytest.raises(RuntimeError, match="boom"), EventWriter(out, SIZE) as w:
        raise RuntimeError("boom")
    assert out.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["ev.h5"]


def test_text_write_is_atomic(tmp_path, stream, monkeypatch):
    out = tmp_path / "ev.txt"

    def fail(*_args, **_kw):
        raise OSError("disk full")

    monkeypatch.setattr("visloc.events.io.text._seconds", fail)
    with pytest.raises(OSError, match="disk full"):
        write_text_events(out, stream)
    assert list(tmp_path.iterdir()) == []


# --- CLI -----------------------------------------------------------------------------------------------------


def test_cli_events_info(tmp_path, stream):
    from typer.testing import CliRunner

    from visloc.cli import app

    runner = CliRunner()
    out = write_events(tmp_path / "ev.h5", stream)
    res = runner.invoke(app, ["events", "info", str(out)])
    assert res.exit_code == 0, res.output
    assert res.output.splitlines() == ["format: visloc-h5", "events: 200", "sensor: 346 x 260",
                                       f"origin_us: {EPOCH_US}", f"duration: {stream.duration_us / 1e6:.6f} s",
                                       f"rate: {200 / (stream.duration_us / 1e6):.1f} events/s"]
    win = tmp_path / "1.5.npy"
    np.save(win, np.array([[1.5, 1, 2, 0], [1.75, 3, 0, 1]]))
    res = runner.invoke(app, ["events", "info", str(win), "--sensor-size", "4x3"])  # the flag reaches the reader
    assert res.exit_code == 0 and "sensor: 4 x 3" in res.output and "duration: 0.250000 s" in res.output
    res = runner.invoke(app, ["events", "info", str(win)])
    assert res.exit_code == 2 and "do not record the sensor size" in res.output
    _mvsec(tmp_path / "r_data.hdf5", stream, camera="right")
    res = runner.invoke(app, ["events", "info", str(tmp_path / "r_data.hdf5"), "--camera", "right"])
    assert res.exit_code == 0 and "format: mvsec-h5" in res.output and "events: 200" in res.output
    assert runner.invoke(app, ["events", "info", str(win), "--sensor-size", "4by3"]).exit_code == 2
