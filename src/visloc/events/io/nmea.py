"""NMEA GPS logs (Brisbane-Event-VPR's ``*.nmea``): ``$..GGA`` / ``$..RMC`` fixes -> times and local metres.

Only position fixes are read: ``GGA`` with a fix quality > 0 and ``RMC`` with status ``A``; other
sentences (GSV, VTG, GSA...) and fix-less ones are skipped, as are sentences whose ``*hh`` checksum is
wrong (a garbled serial line; they are counted in the log). Any talker (``GP``, ``GN``, ``GL``...) is
accepted. Latitude ``ddmm.mmmm`` and longitude ``dddmm.mmmm`` become signed degrees.

Times are UTC: NMEA gives the time of day, ``RMC`` also the date. With a date (from an ``RMC`` or the
``date`` argument) times are µs since the Unix epoch, the clock of ROS bags and of Brisbane's parquet
``t``; without one they are µs since midnight of the first fix's day (``GpsFixes.dated`` says which).
A clock at midnight rolls over into the next day. A receiver's UTC and the event camera's clock can
differ by an offset the caller must supply (Brisbane's tools align each traverse by hand).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from visloc.data.world.geodesy import GeoOrigin, geodetic_to_enu
from visloc.events.io.common import EventFileError
from visloc.events.windows import Trajectory

log = logging.getLogger(__name__)

_DAY_US = 86_400 * 1_000_000
_EPOCH = dt.date(1970, 1, 1).toordinal()


@dataclass(frozen=True, eq=False)
class GpsFixes:
    """Position fixes of one log, in time order (one per time: a GGA and an RMC of one second count once).

    Attributes:
        times_us: ``[K]`` int64 UTC µs, strictly increasing: since the Unix epoch if ``dated``, else
            since midnight (UTC) of the first fix's day.
        lat_deg: ``[K]`` float64 WGS84 latitude, degrees (north positive).
        lon_deg: ``[K]`` float64 WGS84 longitude, degrees (east positive).
        dated: whether the log (or the caller) gave the date.
    """

    times_us: np.ndarray
    lat_deg: np.ndarray
    lon_deg: np.ndarray
    dated: bool

    def __len__(self) -> int:
        return len(self.times_us)

    def positions_m(self, origin: GeoOrigin | None = None) -> np.ndarray:
        """``[K, 2]`` east, north metres in the local tangent plane at ``origin`` (default: the first fix).

        Exact (WGS84 through PROJ, ``data.world.geodesy``), not a flat-earth approximation. Give two
        traverses the same ``origin`` to compare their positions.
        """
        origin = origin or GeoOrigin(float(self.lat_deg[0]), float(self.lon_deg[0]))
        return geodetic_to_enu(self.lat_deg, self.lon_deg, np.zeros(len(self)), origin)[:, :2]

    def trajectory(self, origin_us: int, *, geo_origin: GeoOrigin | None = None,
                   clock_offset_us: int = 0) -> Trajectory:
        """The fixes as a ``Trajectory`` on an event stream's clock.

        Args:
            origin_us: the stream's ``origin_us``.
            geo_origin: the tangent plane's origin (``positions_m``).
            clock_offset_us: added to the GPS times to put them on the events' clock.
        """
        return Trajectory(self.times_us + np.int64(clock_offset_us - origin_us), self.positions_m(geo_origin))


class _Malformed(Exception):
    """A sentence with a good (or no) checksum whose fields do not parse; the message says which."""


def _checksum_ok(sentence: str) -> bool:
    body, star, given = sentence[1:].partition("*")
    if not star:
        return True  # NMEA makes the checksum optional
    want = 0
    for c in body:
        want ^= ord(c)
    try:
        return int(given[:2], 16) == want
    except ValueError:
        return False


def _angle(value: str, hemi: str, deg_digits: int, limit: float, name: str) -> float:
    whole, _, frac = value.partition(".")
    if len(whole) != deg_digits + 2 or not whole.isdigit() or (frac and not frac.isdigit()):
        raise _Malformed(f"{name} {value!r} is not {'d' * deg_digits}mm.mmmm")
    minutes = float(f"{whole[deg_digits:]}.{frac or 0}")
    deg = int(whole[:deg_digits]) + minutes / 60.0
    if minutes >= 60 or deg > limit or hemi not in (("N", "S") if name == "latitude" else ("E", "W")):
        raise _Malformed(f"{name} {value!r} {hemi!r} is out of range")
    return -deg if hemi in ("S", "W") else deg


def _time_of_day_us(value: str) -> int:
    whole, _, frac = value.partition(".")
    if len(whole) != 6 or not whole.isdigit() or (frac and not frac.isdigit()):
        raise _Malformed(f"time {value!r} is not hhmmss.ss")
    h, m, s = int(whole[:2]), int(whole[2:4]), int(whole[4:])
    if h > 23 or m > 59 or s > 60:
        raise _Malformed(f"time {value!r} is out of range")
    return ((h * 60 + m) * 60 + s) * 1_000_000 + int((frac + "000000")[:6])


def _date_days(value: str) -> int:
    if len(value) != 6 or not value.isdigit():
        raise _Malformed(f"date {value!r} is not ddmmyy")
    yy = int(value[4:])
    try:
        day = dt.date(2000 + yy if yy < 80 else 1900 + yy, int(value[2:4]), int(value[:2]))
    except ValueError:
        raise _Malformed(f"date {value!r} is not a date") from None
    return day.toordinal() - _EPOCH


def parse_sentence(sentence: str) -> tuple[int, int | None, float, float] | None:
    """``(time of day µs, epoch day or None, lat, lon)`` of one GGA / RMC fix; None for anything else.

    Raises:
        ValueError: a GGA / RMC sentence whose fields do not parse (the message says which field).
    """
    fields = sentence.partition("*")[0].split(",")
    kind = fields[0][-3:] if fields[0].startswith("$") and len(fields[0]) == 6 else ""
    try:
        if kind == "GGA" and len(fields) >= 7:
            if fields[6] in ("", "0") or not fields[2]:
                return None
            return (_time_of_day_us(fields[1]), None, _angle(fields[2], fields[3], 2, 90.0, "latitude"),
                    _angle(fields[4], fields[5], 3, 180.0, "longitude"))
        if kind == "RMC" and len(fields) >= 10:
            if fields[2] != "A" or not fields[3]:
                return None
            return (_time_of_day_us(fields[1]), _date_days(fields[9]), _angle(fields[3], fields[4], 2, 90.0,
                                                                              "latitude"),
                    _angle(fields[5], fields[6], 3, 180.0, "longitude"))
        if kind in ("GGA", "RMC"):
            raise _Malformed(f"{len(fields)} fields")
    except _Malformed as e:
        raise ValueError(f"malformed {fields[0]} sentence: {e}") from None
    return None


def read_nmea(path: str | Path, *, date: dt.date | None = None) -> GpsFixes:
    """The GGA / RMC position fixes of an NMEA log.

    Args:
        path: the log, one sentence per line (text before a line's ``$`` is ignored).
        date: the UTC date of the first fix, for logs without RMC dates (an RMC date wins).

    Raises:
        EventFileError: naming ``file:line``: non-UTF-8 bytes, a malformed GGA / RMC sentence, time that
            goes back; or a log with no fix.
    """
    path = Path(path)
    if not path.is_file():
        raise EventFileError(f"{path}: GPS log not found")
    rows: list[tuple[int, int, int | None, float, float]] = []  # line, time of day, day, lat, lon
    bad_checksums = 0
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError as e:
                raise EventFileError(f"{path}:{lineno}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column "
                                     f"{e.start + 1})") from None
            start = line.find("$")
            if start < 0:
                continue
            sentence = line[start:]
            if not _checksum_ok(sentence):
                bad_checksums += 1
                continue
            try:
                fix = parse_sentence(sentence)
            except ValueError as e:
                raise EventFileError(f"{path}:{lineno}: {e}") from None
            if fix is not None:
                rows.append((lineno, *fix))
    if bad_checksums:
        log.warning("%s: skipped %d sentence(s) with a wrong checksum", path, bad_checksums)
    if not rows:
        raise EventFileError(f"{path}: no GGA or RMC position fix")
    return _assemble(path, rows, date)


def _assemble(path: Path, rows: list[tuple[int, int, int | None, float, float]], date: dt.date | None) -> GpsFixes:
    """Continuous times (across midnight), dated by the first RMC or ``date``; one fix per time."""
    day, prev, cont = 0, None, []
    for lineno, tod, _, _, _ in rows:
        if prev is not None and tod < prev:
            if prev - tod < _DAY_US // 2:
                raise EventFileError(f"{path}:{lineno}: time goes back ({tod / 1e6:.3f} s after "
                                     f"{prev / 1e6:.3f} s of the day)")
            day += 1  # midnight
        cont.append(day * _DAY_US + tod)
        prev = tod
    offset, dated = 0, date is not None
    dates = [(k, r[2]) for k, r in enumerate(rows) if r[2] is not None]
    if dates:
        k, days = dates[0]
        offset, dated = days * _DAY_US + rows[k][1] - cont[k], True
    elif date is not None:
        offset = (date.toordinal() - _EPOCH) * _DAY_US
    keep = [k for k in range(len(rows)) if k == 0 or cont[k] > cont[k - 1]]
    return GpsFixes(np.asarray([cont[k] + offset for k in keep], np.int64),
                    np.asarray([rows[k][3] for k in keep], np.float64),
                    np.asarray([rows[k][4] for k in keep], np.float64), dated)
