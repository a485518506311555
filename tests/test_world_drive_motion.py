"""The drive's parts that need no city: geodesy, speed profiles, routes and trajectories on a synthetic grid."""

from __future__ import annotations

import numpy as np
import pytest

from visloc.conf import ConfError
from visloc.data.scene.places import Street
from visloc.data.world.geodesy import (
    GeoOrigin,
    enu_to_geodetic,
    geodetic_to_enu,
    geodetic_to_utm,
    utm_to_geodetic,
    utm_zone,
)
from visloc.data.world.motion import Limits, plan_profile
from visloc.data.world.route import centreline, plan_route, street_graph
from visloc.data.world.trajectory import VehicleConf, drive, vehicle_path

ORIGIN = GeoOrigin(39.9522, -75.1932, 10.0)


def test_enu_geodetic_round_trip_within_a_centimetre() -> None:
    enu = np.random.default_rng(0).uniform([-3000, -3000, 0], [3000, 3000, 30], (200, 3))
    lat, lon, h = enu_to_geodetic(enu, ORIGIN)
    assert np.abs(geodetic_to_enu(lat, lon, h, ORIGIN) - enu).max() < 0.01
    lat0, lon0, h0 = enu_to_geodetic(np.zeros((1, 3)), ORIGIN)
    assert (lat0[0], lon0[0], h0[0]) == pytest.approx((39.9522, -75.1932, 10.0), abs=1e-9)
    # 1 km east is about 1 km / (R cos(lat)) of longitude, 1 km north about 1 km / R of latitude
    lat1, lon1, _ = enu_to_geodetic(np.array([[1000.0, 0, 0], [0, 1000.0, 0]]), ORIGIN)
    assert lon1[0] - ORIGIN.lon_deg == pytest.approx(np.rad2deg(1000 / (6378137 * np.cos(np.deg2rad(39.9522)))),
                                                     rel=3e-3)
    assert lat1[1] - ORIGIN.lat_deg == pytest.approx(np.rad2deg(1000 / 6356752), rel=3e-3)


def test_utm_matches_a_published_reference_point() -> None:
    # GeographicLib's GeoConvert documentation: 33.3 44.4 -> "38n 444140.54 3684706.36"
    e, n, zone = geodetic_to_utm(np.array([33.3]), np.array([44.4]))
    assert zone[0] == "38N"
    assert (e[0], n[0]) == pytest.approx((444140.54, 3684706.36), abs=0.01)
    lat, lon = utm_to_geodetic(e, n, "38N")
    assert (lat[0], lon[0]) == pytest.approx((33.3, 44.4), abs=1e-9)


def test_utm_zones_follow_the_rule_and_its_exceptions() -> None:
    zone, hemi = utm_zone(np.array([40.0, -33.9, 60.0, 78.0, 78.0, 0.0]), np.array([-75.2, 18.4, 5.0, 20.0, 8.0,
                                                                                   179.99]))
    assert zone.tolist() == [18, 34, 32, 33, 31, 60]
    assert hemi.tolist() == ["N", "S", "N", "N", "N", "N"]


LIM = Limits(max_speed=12.0, max_accel=1.5, max_decel=2.5, max_jerk=1.0)


def test_profile_respects_every_bound_and_stops() -> None:
    prof = plan_profile(500.0, [(200.0, 3.0)], [(100.0, 110.0, 4.0), (300.0, 305.0, 3.0)], LIM, 1.0, 1.0)
    dt = 1e-3
    s, v, a = prof.sample(np.arange(0.0, prof.duration + dt / 2, dt))
    assert s[0] == 0 and s[-1] == pytest.approx(500.0, abs=1e-6) and v[-1] == pytest.approx(0.0, abs=1e-9)
    assert v.max() <= 12.0 + 1e-9 and a.max() <= 1.5 + 1e-9 and a.min() >= -2.5 - 1e-9
    assert np.abs(np.diff(a) / dt).max() <= 1.0 + 1e-6
    assert np.diff(s).min() >= -1e-9  # never backwards
    np.testing.assert_allclose(np.diff(s) / dt, (v[1:] + v[:-1]) / 2, atol=1e-5)  # v is ds/dt
    for a_, b_, cap in ((100.0, 110.0, 4.0), (300.0, 305.0, 3.0)):
        assert v[(s >= a_) & (s <= b_)].max() <= cap + 1e-9
    at_stop = np.abs(s - 200.0) < 1e-6  # the dwell, and the last and first millimetre of approach and start
    assert 3.0 <= at_stop.sum() * dt <= 3.1 and v[at_stop].max() < 1e-3


def test_profile_refuses_overlapping_constraints() -> None:
    with pytest.raises(ValueError, match="overlap"):
        plan_profile(100.0, [(50.0, 1.0)], [(45.0, 55.0, 3.0)], LIM)


def _grid() -> list[Street]:
    """4 x 4 intersections, 90 m by 60 m blocks, widths 10 .. 16 m."""
    streets, i = [], 0
    for r in range(4):
        for c in range(3):
            streets.append(Street(i, (c * 90.0, r * 60.0), ((c + 1) * 90.0, r * 60.0), 10.0 + 2 * (i % 4), (), "train"))
            i += 1
    for c in range(4):
        for r in range(3):
            streets.append(Street(i, (c * 90.0, r * 60.0), (c * 90.0, (r + 1) * 60.0), 10.0 + 2 * (i % 4), (), "train"))
            i += 1
    return streets


def _inside(xy: np.ndarray, street: Street) -> np.ndarray:
    a, b = np.asarray(street.start), np.asarray(street.end)
    u = (b - a) / np.linalg.norm(b - a)
    rel = xy - a
    along, across = rel @ u, rel @ np.array([-u[1], u[0]])
    return (along >= -street.width_m / 2) & (along <= np.linalg.norm(b - a) + street.width_m / 2) & (
        np.abs(across) <= street.width_m / 2)


def test_trajectory_stays_in_its_streets_within_every_bound() -> None:
    streets = _grid()
    graph = street_graph(streets)
    assert len(graph.nodes) == 16 and len(graph.edges) == 24
    route = plan_route(graph, 400.0, np.random.default_rng(1))
    assert route.length_m >= 400 and len(set(route.street_ids)) == len(route.street_ids)
    line = centreline(route, 6.0)
    conf = VehicleConf(stop_probability=1.0, lane_change_probability=1.0)
    path = vehicle_path(line, route, conf, 0.5, 1.0, np.random.default_rng(2))
    traj, _ = drive(path, conf, 1.0, 1000)
    assert np.array_equal(np.diff(traj.t_us), np.full(len(traj.t_us) - 1, 1000))
    assert traj.speed.max() <= conf.max_speed_mps + 1e-9
    assert traj.accel.max() <= conf.max_accel_mps2 + 1e-9 and traj.accel.min() >= -conf.max_decel_mps2 - 1e-9
    assert np.abs(np.diff(traj.accel) * 1000).max() <= conf.max_jerk_mps3 + 1e-6
    kappa = np.abs(np.gradient(traj.heading) / np.maximum(np.gradient(traj.s), 1e-9))
    assert np.max(traj.speed ** 2 * kappa) <= conf.max_lateral_accel_mps2 * 1.01
    assert len(path.stops) == len(route.street_ids) - 1  # a stop before every intersection passed
    lateral = np.round(traj.lateral, 6)
    assert {-0.75, 1.75} <= set(lateral.tolist())  # home lane with its offset, and a lane change to the left
    by_id = {s.id: s for s in streets}
    for pts in (traj.position[:, :2], traj.cam_center[:, :2]):
        assert np.any([_inside(pts, by_id[sid]) for sid in route.street_ids], axis=0).all()
        own = np.array([_inside(p[None], by_id[sid])[0] for p, sid in
                        zip(pts[::50], traj.street_id[::50], strict=True)])
        assert own.mean() > 0.9  # on the street it is said to be on, but for the turns' arcs
    # the camera: mount ahead of the reference point, at its height, looking along the heading
    fwd = np.stack([np.cos(traj.heading), np.sin(traj.heading)], 1)
    np.testing.assert_allclose(traj.cam_center[:, :2], traj.position[:, :2] + conf.cam_forward_m * fwd, atol=1e-9)
    np.testing.assert_allclose(traj.cam_center[:, 2], conf.cam_height_m)
    optical_axis = traj.R[:, 2]  # third row: the camera's z axis in world coordinates
    np.testing.assert_allclose(optical_axis[:, :2] / np.linalg.norm(optical_axis[:, :2], axis=1, keepdims=True), fwd,
                               atol=1e-9)
    assert np.rad2deg(np.arcsin(optical_axis[:, 2])) == pytest.approx(conf.cam_pitch_deg)


def test_vehicle_conf_checks_name_the_field() -> None:
    with pytest.raises(ConfError, match=r"^VehicleConf\.max_jerk_mps3: must be > 0"):
        VehicleConf(max_jerk_mps3=0.0)
    with pytest.raises(ConfError, match=r"^VehicleConf\.stop_probability"):
        VehicleConf(stop_probability=1.5)


@pytest.mark.parametrize("caps, stops", [([(0.0, 2.4, 9.2)], []),  # the route starts on a curve
                                         ([(50.5, 60.0, 4.0)], [(50.0, 3.0)]),  # a turn just after a stop
                                         ([(95.0, 99.9, 4.0)], [])])  # a curve just before the end
def test_a_cap_next_to_a_rest_is_not_crawled_through(caps: list[tuple[float, float, float]],
                                                     stops: list[tuple[float, float]]) -> None:
    # the cap used to be held at the speed reachable at its start (1e-12 m/s): a duration of 1e12 s
    prof = plan_profile(100.0, stops, caps, LIM, 1.0, 1.0)
    dwell = 2.0 + sum(d for _, d in stops)
    assert prof.duration < dwell + 40.0  # 100 m at up to 12 m/s with S-curves: well under 40 s of driving
    dt = 1e-3
    s, v, _ = prof.sample(np.arange(0.0, prof.duration + dt / 2, dt))
    assert s[-1] == pytest.approx(100.0, abs=1e-6)
    for a_, b_, cap in caps:
        assert v[(s >= a_) & (s <= b_)].max() <= cap + 1e-9
