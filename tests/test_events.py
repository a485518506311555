"""EventStream validation and conversions, windows, and exact representation values on hand-made streams."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from visloc.conf import ConfError
from visloc.events import EventStream, EventStreamError, Trajectory, count_windows, distance_windows, time_windows
from visloc.events.representations import (
    HistogramConf,
    TimeSurfaceConf,
    VoxelGridConf,
    histogram,
    time_surface,
    voxel_grid,
)
from visloc.registry import REPRESENTATIONS


def _stream(t, x, y, p, size=(3, 2), origin_us=0) -> EventStream:
    return EventStream(np.asarray(t, np.int64), np.asarray(x, np.int16), np.asarray(y, np.int16),
                       np.asarray(p, np.int8), size, origin_us)


@pytest.fixture
def five() -> EventStream:
    """Five events on a 3x2 sensor; pixel (x=2, y=0) fires twice (+1 at 25 and 30 µs)."""
    return _stream([0, 10, 25, 30, 40], [0, 1, 2, 2, 0], [0, 1, 0, 0, 0], [1, -1, 1, 1, -1])


# --- stream -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("change", "field"), [
    ({"t": [0, 20, 10]}, "EventStream.t"),
    ({"x": [0, 3, 1]}, "EventStream.x"),
    ({"y": [0, 0, -1]}, "EventStream.y"),
    ({"p": [1, 2, -1]}, "EventStream.p"),
    ({"p": [1, 0, -1]}, "EventStream.p"),
    ({"y": [0, 1]}, "EventStream.y"),
])
def test_stream_validation_names_the_field(change, field):
    arrays = {"t": [0, 10, 20], "x": [0, 1, 2], "y": [0, 1, 1], "p": [1, -1, 1]} | change
    with pytest.raises(ValueError, match=field) as info:
        _stream(**arrays)
    assert isinstance(info.value, EventStreamError)


def test_stream_rejects_unconverted_dtypes():
    with pytest.raises(EventStreamError, match="EventStream.t: expected int64"):
        EventStream(np.zeros(2), np.zeros(2, np.int16), np.zeros(2, np.int16), np.ones(2, np.int8), (3, 2))
    with pytest.raises(EventStreamError, match="EventStream.p: expected int8"):
        EventStream(np.zeros(2, np.int64), np.zeros(2, np.int16), np.zeros(2, np.int16), np.ones(2), (3, 2))
    with pytest.raises(EventStreamError, match="EventStream.sensor_size"):
        _stream([0], [0], [0], [1], size=(3, 0))


def test_seconds_to_microseconds_exact_and_origin():
    t_s = np.array([1_500_000_000.000001, 1_500_000_000.123456, 1_500_000_002.5])
    before = t_s.copy()
    s = EventStream.from_arrays(t_s, np.array([0, 1, 2]), np.array([0, 0, 1]), np.array([1, -1, 1]), (3, 2),
                                t_unit="s")
    assert s.origin_us == 1_500_000_000_000_001
    assert s.t.dtype == np.int64 and s.t.tolist() == [0, 123_455, 2_499_999]
    assert np.array_equal(t_s, before)
    given = EventStream.from_arrays(t_s, np.array([0, 1, 2]), np.array([0, 0, 1]), np.array([1, -1, 1]), (3, 2),
                                    t_unit="s", origin_us=1_500_000_000_000_000)
    assert given.t.tolist() == [1, 123_456, 2_500_000]
    assert given.origin_us + int(given.t[1]) == 1_500_000_000_123_456


def test_polarity_and_coordinate_conversions():
    p01 = np.array([0, 1, 1, 0], np.uint8)
    xf = np.array([0.0, 1.0, 2.0, 2.0])  # MVSEC stores x, y as float64
    s = EventStream.from_arrays(np.arange(4), xf, np.zeros(4), p01, (3, 2), polarity="01")
    assert s.p.dtype == np.int8 and s.p.tolist() == [-1, 1, 1, -1]
    assert p01.tolist() == [0, 1, 1, 0] and s.x.dtype == np.int16 and s.x.tolist() == [0, 1, 2, 2]
    assert s.origin_us == 0 and s.t.tolist() == [0, 1, 2, 3]
    with pytest.raises(EventStreamError, match="EventStream.p"):
        EventStream.from_arrays(np.arange(2), np.zeros(2), np.zeros(2), np.array([-1, 1]), (3, 2), polarity="01")
    with pytest.raises(EventStreamError, match="EventStream.x: float values must be integral"):
        EventStream.from_arrays(np.arange(2), np.array([0.5, 1.0]), np.zeros(2), np.ones(2), (3, 2))
    with pytest.raises(EventStreamError, match="EventStream.t: float values must be integral"):
        EventStream.from_arrays(np.array([0.0, 1.5]), np.zeros(2), np.zeros(2), np.ones(2), (3, 2))


def test_slices_are_views_and_read_only(five):
    caller_t = np.array([0, 10, 25, 30, 40], np.int64)
    s = EventStream(caller_t, five.x, five.y, five.p, (3, 2), origin_us=7)
    sub = s.slice_time(10, 30)
    assert sub.t.tolist() == [10, 25] and sub.x.tolist() == [1, 2] and sub.origin_us == 7
    assert np.shares_memory(sub.t, caller_t) and np.shares_memory(sub.p, five.p)
    assert s.slice_index(3, 5).t.tolist() == [30, 40] and len(s.slice_index(2, 2)) == 0
    assert s.index_range(11, 41) == (2, 5) and s.duration_us == 40 and len(s) == 5
    with pytest.raises(ValueError, match="read-only"):
        s.t[0] = 3
    assert caller_t.flags.writeable  # only the stream's view is read-only
    with pytest.raises(ValueError, match="slice_index"):
        s.slice_index(3, 6)
    ev = s.to_torch()
    assert ev.t.dtype == torch.int64 and ev.x.dtype == torch.int64 and ev.p.dtype == torch.float32
    assert ev.p.tolist() == [1.0, -1.0, 1.0, 1.0, -1.0]


def test_shifted_keeps_absolute_times(five):
    s = five.shifted(1000)
    assert s.t.tolist() == [1000, 1010, 1025, 1030, 1040] and s.origin_us == -1000
    assert np.array_equal(s.t + s.origin_us, five.t + five.origin_us)


# --- windows ------------------------------------------------------------------------------------------------


def test_count_windows_with_stride_and_partial_tail():
    s = _stream(np.arange(10) * 10, np.zeros(10), np.zeros(10), np.ones(10))
    ws = count_windows(s, 4, stride=3)
    assert [(w.i0, w.i1, w.t0_us, w.t1_us) for w in ws] == [(0, 4, 0, 31), (3, 7, 30, 61), (6, 10, 60, 91)]
    assert [(k.i0, k.i1, k.reason) for k in ws.skipped] == [(9, 10, "partial")]
    assert all(w.position is None and w.num_events == 4 for w in ws)
    assert len(count_windows(s, 5)) == 2 and count_windows(s, 5).skipped == ()
    with pytest.raises(ValueError, match="stride"):
        count_windows(s, 4, stride=0)


def test_time_windows_report_empty_and_partial():
    t = np.array([v for v in range(0, 200, 10) if not 100 <= v < 150])  # a gap: no events in [100, 150)
    s = _stream(t, np.zeros(len(t)), np.zeros(len(t)), np.ones(len(t)))
    ws = time_windows(s, 50)
    assert [(w.i0, w.i1, w.t0_us, w.t1_us) for w in ws] == [(0, 5, 0, 50), (5, 10, 50, 100)]
    assert [(k.t0_us, k.t1_us, k.reason) for k in ws.skipped] == [(100, 150, "empty"), (150, 191, "partial")]
    overlapping = time_windows(s, 50, stride_us=25)
    assert [(w.t0_us, w.num_events) for w in overlapping] == [(0, 5), (25, 5), (50, 5), (75, 2), (125, 3)]
    assert [k.reason for k in overlapping.skipped] == ["empty", "partial"]
    assert all(w.num_events > 0 for w in overlapping)


def test_window_positions_interpolated_at_centre():
    s = _stream(np.arange(0, 100, 10), np.zeros(10), np.zeros(10), np.ones(10))
    traj = Trajectory(np.array([0, 100]), np.array([[0.0, 0.0], [10.0, -20.0]]))
    ws = time_windows(s, 40, trajectory=traj)
    assert [w.position for w in ws] == [(2.0, -4.0), (6.0, -12.0)]
    late = Trajectory(np.array([50, 200]), np.array([[0.0, 0.0], [1.0, 1.0]]))
    ws = count_windows(s, 5, trajectory=late)  # centres (0 + 41) / 2 = 20.5 and (50 + 91) / 2 = 70.5
    assert [w.i0 for w in ws] == [5] and ws[0].position == pytest.approx((20.5 / 150, 20.5 / 150))
    assert [(k.i0, k.reason) for k in ws.skipped] == [(0, "outside-trajectory")]


@pytest.fixture
def stop_and_go() -> tuple[EventStream, Trajectory]:
    """10 m/s along x for 0.9 s, stopped at x = 9 m for 3 s, 10 m/s again to x = 20 m at 5 s; 1 event/ms."""
    t = np.arange(0, 5_000_001, 1000)
    s = _stream(t, np.zeros(len(t)), np.zeros(len(t)), np.ones(len(t)))
    traj = Trajectory(np.array([0, 900_000, 3_900_000, 5_000_000]),
                      np.array([[0.0, 0.0], [9.0, 0.0], [9.0, 0.0], [20.0, 0.0]]))
    return s, traj


def test_distance_windows_on_a_moving_vehicle(stop_and_go):
    s, traj = stop_and_go
    ws = distance_windows(s, traj, 2.0)
    first = ws[0]
    assert (first.i0, first.i1, first.t0_us, first.t1_us) == (0, 200, 0, 200_000)
    assert first.position == pytest.approx((1.0, 0.0))
    assert [w.t0_us for w in ws] == [0, 200_000, 400_000, 600_000, 4_000_000, 4_200_000, 4_400_000, 4_600_000,
                                     4_800_000]
    assert all(w.duration_us == 200_000 and w.num_events == 200 for w in ws)
    assert [w.position[0] if w.position else None for w in ws] == pytest.approx([1, 3, 5, 7, 11, 13, 15, 17, 19])


def test_stopped_vehicle_window_is_reported_not_stretched(stop_and_go):
    s, traj = stop_and_go
    ws = distance_windows(s, traj, 2.0)
    # [8 m, 10 m) contains the 3 s stop at 9 m: it would last 0.8 s -> 4.0 s, so it is skipped
    assert [(k.t0_us, k.t1_us, k.reason) for k in ws.skipped] == [(800_000, 4_000_000, "stationary")]
    assert max(w.duration_us for w in ws) <= 1_000_000
    stretched = distance_windows(s, traj, 2.0, max_duration_us=5_000_000)
    assert len(stretched) == 10 and stretched[4].duration_us == 3_200_000 and stretched.skipped == ()
    # a stop exactly at a window boundary adds nothing: the window starts when the vehicle leaves
    halves = distance_windows(s, traj, 1.0, stride_m=1.0)
    at_stop = [w for w in halves if w.t0_us >= 900_000][0]
    assert (at_stop.t0_us, at_stop.t1_us) == (3_900_000, 4_000_000) and halves.skipped == ()


# --- representations: exact values --------------------------------------------------------------------------


def test_voxel_grid_e2vid_by_hand(five):
    # t* = (B - 1) t / 40 = [0, 0.5, 1.25, 1.5, 2.0]
    expected = torch.tensor([[[1, 0, 0], [0, -0.5, 0]],
                             [[0, 0, 0.75 + 0.5], [0, -0.5, 0]],
                             [[-1, 0, 0.25 + 0.5], [0, 0, 0]]])
    out = voxel_grid(five, VoxelGridConf(bins=3, normalization="e2vid"))
    assert out.dtype == torch.float32 and torch.equal(out, expected)
    assert float(out.sum()) == float(five.p.sum())


def test_voxel_grid_tonic_by_hand(five):
    # t* = B t / 40 = [0, 0.75, 1.875, 2.25, 3.0]: the last event (t* = 3) and event 3's right share are dropped
    expected = torch.tensor([[[1, 0, 0], [0, -0.25, 0]],
                             [[0, 0, 0.125], [0, -0.75, 0]],
                             [[0, 0, 0.875 + 0.75], [0, 0, 0]]])
    out = voxel_grid(five, VoxelGridConf(bins=3, normalization="tonic"))
    assert torch.equal(out, expected)
    assert float(out.sum()) == 1.75 == float(five.p.sum()) - 0.25 + 1


@pytest.mark.parametrize("normalization", ["e2vid", "tonic"])
def test_voxel_grid_equal_timestamps_go_to_bin_zero(normalization):
    s = _stream([7, 7, 7], [0, 1, 1], [0, 1, 1], [1, -1, -1])
    out = voxel_grid(s, VoxelGridConf(bins=4, normalization=normalization))
    assert torch.isfinite(out).all() and torch.equal(out[1:], torch.zeros(3, 2, 3))
    assert out[0].tolist() == [[1, 0, 0], [0, -2, 0]]


def test_histogram_by_hand(five):
    out = histogram(five, HistogramConf())
    assert out.tolist() == [[[1, 0, 2], [0, 0, 0]], [[1, 0, 0], [0, 1, 0]]]


def test_time_surface_by_hand(five):
    out = time_surface(five, TimeSurfaceConf(tau_us=10.0))  # t_end = 40 (the last event)
    e = np.exp
    expected = torch.tensor([[[e(-4), 0, e(-1)], [0, 0, 0]],  # (x=2, y=0): its latest positive event, at 30
                             [[1, 0, 0], [0, e(-3), 0]]], dtype=torch.float32)
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=0)
    later = time_surface(five, TimeSurfaceConf(tau_us=10.0), t_range=(0, 50))
    torch.testing.assert_close(later, expected * float(e(-1.0)), rtol=1e-6, atol=0)


def test_t_range_must_contain_the_events(five):
    with pytest.raises(ValueError, match="t_range"):
        voxel_grid(five, VoxelGridConf(), t_range=(5, 40))
    wider = voxel_grid(five, VoxelGridConf(bins=3), t_range=(0, 80))  # t* = t / 40: all in bins 0..1
    assert float(wider[2].abs().sum()) == 0 and float(wider.sum()) == 1


def test_time_window_span_as_t_range():
    s = _stream([0, 10, 25, 30, 40, 60, 99], [0] * 7, [0] * 7, [1] * 7, size=(1, 1))
    ws = time_windows(s, 50)
    assert ws.t_ranges() == [(0, 49), (50, 99)] and ws.skipped == ()
    own = voxel_grid(ws[0].events(s), VoxelGridConf(bins=2))  # t* = t / 40 = [0, 0.25, 0.625, 0.75, 1]
    span = voxel_grid(ws[0].events(s), VoxelGridConf(bins=2), t_range=ws[0].t_range)  # t* = t / 49
    assert own[:, 0, 0].tolist() == [2.375, 2.625]
    torch.testing.assert_close(span[:, 0, 0], torch.tensor([1 + 39 / 49 + 24 / 49 + 19 / 49 + 9 / 49,
                                                            10 / 49 + 25 / 49 + 30 / 49 + 40 / 49]))


def test_confs_are_checked_and_registered():
    with pytest.raises(ConfError, match="voxel-grid.bins"):
        REPRESENTATIONS.conf("voxel-grid", ["bins=0"])
    with pytest.raises(ConfError, match="tau_us"):
        TimeSurfaceConf(tau_us=0.0)
    with pytest.raises(ConfError):
        REPRESENTATIONS.conf("voxel-grid", ["normalisation=tonic"])  # a typo is an error, not a default
    rep = REPRESENTATIONS.build("voxel-grid", ["bins=9", "normalization=tonic"])
    spec = rep.input_spec()
    assert (spec.kind, spec.channels, spec.representation, spec.bins) == ("events", 9, "voxel-grid", 9)
    assert rep.mass is None and REPRESENTATIONS.build("voxel-grid").mass == "polarity"
    assert REPRESENTATIONS.kind_of("histogram") == "events"
