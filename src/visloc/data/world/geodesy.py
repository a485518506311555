"""Pseudo-GPS for the city: local east-north-up metres to WGS84 latitude / longitude / height and to UTM.

The city's world frame (metres, x east, y north, z up) is a local tangent plane (ENU) whose origin is a stated
geodetic point (:class:`GeoOrigin`: latitude, longitude in degrees, ellipsoidal height in metres, WGS84). The
conversion is exact, not a flat-earth approximation:

1. ENU -> ECEF: ``X = X0 + R^T enu`` with ``X0`` the origin's ECEF position and ``R`` the rotation whose rows
   are the local east, north and up unit vectors in ECEF (the standard closed form).
2. ECEF <-> geodetic (WGS84 ellipsoid) with PROJ through ``pyproj`` (``EPSG:4978`` <-> ``EPSG:4979``).
3. geodetic -> UTM with PROJ (``EPSG:326zz`` north, ``EPSG:327zz`` south; Krüger series, sub-millimetre).

The UTM zone of each point follows the standard 6-degree rule with its two exceptions (zone 32V widened to
3-12 E in southern Norway; zones 31X, 33X, 35X, 37X over Svalbard); the hemisphere is ``N`` for latitude >= 0.
PROJ's database ships inside the ``pyproj`` wheel and nothing is fetched from the network.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

# WGS84 ellipsoid
_A = 6378137.0
_F = 1.0 / 298.257223563
_E2 = _F * (2.0 - _F)


@dataclass(frozen=True)
class GeoOrigin:
    """The geodetic point at the world frame's origin (WGS84).

    Attributes:
        lat_deg: latitude in degrees, in [-80, 84] (UTM's range).
        lon_deg: longitude in degrees, in [-180, 180).
        height_m: ellipsoidal height of the ground (world z = 0) at the origin, metres.
    """

    lat_deg: float
    lon_deg: float
    height_m: float = 0.0

    def __post_init__(self) -> None:
        if not -80.0 <= self.lat_deg <= 84.0:
            raise ValueError(f"GeoOrigin: lat_deg must be in [-80, 84] (UTM), got {self.lat_deg}")
        if not -180.0 <= self.lon_deg < 180.0:
            raise ValueError(f"GeoOrigin: lon_deg must be in [-180, 180), got {self.lon_deg}")


@functools.cache
def _transformer(src: str, dst: str):  # noqa: ANN202 (pyproj is imported on use)
    from pyproj import Transformer

    return Transformer.from_crs(src, dst, always_xy=True)


def _ecef_of(lat_deg: float, lon_deg: float, h_m: float) -> np.ndarray:
    lat, lon = np.deg2rad(lat_deg), np.deg2rad(lon_deg)
    n = _A / np.sqrt(1.0 - _E2 * np.sin(lat) ** 2)
    return np.array([(n + h_m) * np.cos(lat) * np.cos(lon), (n + h_m) * np.cos(lat) * np.sin(lon),
                     (n * (1.0 - _E2) + h_m) * np.sin(lat)])


def _enu_rotation(lat_deg: float, lon_deg: float) -> np.ndarray:
    """[3, 3] rotation ECEF -> ENU at the given point (rows: east, north, up in ECEF)."""
    lat, lon = np.deg2rad(lat_deg), np.deg2rad(lon_deg)
    sl, cl, sp, cp = np.sin(lon), np.cos(lon), np.sin(lat), np.cos(lat)
    return np.array([[-sl, cl, 0.0], [-sp * cl, -sp * sl, cp], [cp * cl, cp * sl, sp]])


def _points(enu: np.ndarray) -> np.ndarray:
    p = np.asarray(enu, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 3:
        raise ValueError(f"expected ENU points [N, 3], got {p.shape}")
    return p


def enu_to_geodetic(enu: np.ndarray, origin: GeoOrigin) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Latitude, longitude (degrees) and ellipsoidal height (metres), each [N], of ENU points ``enu`` [N, 3]."""
    p = _points(enu)
    ecef = _ecef_of(origin.lat_deg, origin.lon_deg, origin.height_m) + p @ _enu_rotation(
        origin.lat_deg, origin.lon_deg)
    lon, lat, h = _transformer("EPSG:4978", "EPSG:4979").transform(ecef[:, 0], ecef[:, 1], ecef[:, 2])
    return np.asarray(lat, np.float64), np.asarray(lon, np.float64), np.asarray(h, np.float64)


def geodetic_to_enu(lat_deg: np.ndarray, lon_deg: np.ndarray, h_m: np.ndarray, origin: GeoOrigin) -> np.ndarray:
    """ENU points [N, 3] (metres) of geodetic points (degrees, degrees, metres; each [N]); inverse of the above."""
    lat, lon, h = (np.asarray(v, np.float64).reshape(-1) for v in (lat_deg, lon_deg, h_m))
    x, y, z = _transformer("EPSG:4979", "EPSG:4978").transform(lon, lat, h)
    ecef = np.stack([np.asarray(x), np.asarray(y), np.asarray(z)], 1)
    d = ecef - _ecef_of(origin.lat_deg, origin.lon_deg, origin.height_m)
    return d @ _enu_rotation(origin.lat_deg, origin.lon_deg).T


def utm_zone(lat_deg: np.ndarray, lon_deg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """UTM zone numbers (int [N], 1..60) and hemispheres (``"N"`` / ``"S"``, [N]) of geodetic points."""
    lat = np.asarray(lat_deg, np.float64).reshape(-1)
    lon = np.asarray(lon_deg, np.float64).reshape(-1)
    lon = (lon + 180.0) % 360.0 - 180.0
    zone = np.floor((lon + 180.0) / 6.0).astype(np.int64) + 1
    zone = np.minimum(zone, 60)
    zone[(lat >= 56) & (lat < 64) & (lon >= 3) & (lon < 12)] = 32  # southern Norway
    sval = (lat >= 72) & (lat < 84)
    for lo, hi, z in ((0, 9, 31), (9, 21, 33), (21, 33, 35), (33, 42, 37)):
        zone[sval & (lon >= lo) & (lon < hi)] = z
    return zone, np.where(lat >= 0, "N", "S")


def geodetic_to_utm(lat_deg: np.ndarray, lon_deg: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """UTM easting, northing (metres, float64 [N]) and zone labels (e.g. ``"18N"``, [N]) of geodetic points.

    Each point is projected in its own zone (see :func:`utm_zone`).
    """
    lat = np.asarray(lat_deg, np.float64).reshape(-1)
    lon = np.asarray(lon_deg, np.float64).reshape(-1)
    zone, hemi = utm_zone(lat, lon)
    east, north = np.empty_like(lat), np.empty_like(lat)
    labels = np.array([f"{z}{h}" for z, h in zip(zone.tolist(), hemi.tolist(), strict=True)], dtype=object)
    for label in sorted(set(labels.tolist())):
        m = labels == label
        epsg = (32600 if label.endswith("N") else 32700) + int(label[:-1])
        e, n = _transformer("EPSG:4326", f"EPSG:{epsg}").transform(lon[m], lat[m])
        east[m], north[m] = e, n
    return east, north, labels.astype(str)


def utm_to_geodetic(east: np.ndarray, north: np.ndarray, zone: str) -> tuple[np.ndarray, np.ndarray]:
    """Latitude, longitude (degrees, [N]) of UTM points of one zone label (e.g. ``"18N"``)."""
    if len(zone) < 2 or zone[-1] not in "NS" or not zone[:-1].isdigit() or not 1 <= int(zone[:-1]) <= 60:
        raise ValueError(f"utm_to_geodetic: zone must be like '18N' or '33S', got {zone!r}")
    epsg = (32600 if zone[-1] == "N" else 32700) + int(zone[:-1])
    lon, lat = _transformer(f"EPSG:{epsg}", "EPSG:4326").transform(np.asarray(east, np.float64),
                                                                     np.asarray(north, np.float64))
    return np.asarray(lat, np.float64), np.asarray(lon, np.float64)
