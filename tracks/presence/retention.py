"""How long raw events are kept: durations as people type them, and the shortest retention.

Pure: no I/O here. `parse_duration` reads ``90s``, ``15m``, ``24h``, ``7d``, ``2w`` for
every option that takes one (``tracks prune --older-than``, ``tracks report --since``,
``rtc token --ttl``); `check_retention` is the one rule for how soon raw events may go.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

from tracks.presence.figures import DAY_MS

__all__ = ["MAX_DURATION_MS", "MIN_RETENTION_MS", "UNIT_MS", "check_retention", "parse_duration"]

UNIT_MS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": DAY_MS, "w": 7 * DAY_MS}
"""Milliseconds per duration unit."""

MAX_DURATION_MS = 2**53 - 1
"""The longest duration (about 285,000 years): exact as a float and as a JSON number."""

MIN_RETENTION_MS = 2 * DAY_MS
"""The shortest time raw events may be kept once rolled up. A rollup recomputes the
peaks of the days it touches from raw events up to a day older than them (a visit can
stay open 24 hours), so deleting younger ones would change those days' peaks."""

# A plain decimal: no sign, exponent, "nan" or "inf" (float() would accept all of them).
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*([a-z]?)\s*$", re.ASCII)


def parse_duration(text: str, *, unit: str | None = None) -> int:
    """Milliseconds of a duration: a number and a unit, ``s``, ``m``, ``h``, ``d`` or ``w``.

    Args:
        text: e.g. ``"90s"``, ``"1.5h"``, ``"7d"``, ``"2w"``.
        unit: the unit of a number written without one (``rtc token --ttl 3600`` takes
            ``"s"``); None: a unit is required.

    Returns:
        The duration in whole milliseconds (rounded to the nearest).

    Raises:
        ValueError: not such a duration (a sign, ``nan``, ``inf``, an unknown unit), or
            longer than `MAX_DURATION_MS`.
    """
    if unit is not None and unit not in UNIT_MS:
        raise ValueError(f"unknown duration unit {unit!r}: expected one of s, m, h, d, w")
    match = _DURATION.match(text)
    chosen = (match[2] or unit) if match is not None else None
    if match is None or chosen is None or chosen not in UNIT_MS:
        expected = "a number and s, m, h, d or w (e.g. 7d)"
        if unit is not None:
            expected = f"{expected}, or a number of {unit}"
        raise ValueError(f"bad duration {text!r}: expected {expected}")
    # Fractions keep "0.1s" exact and never overflow where a float would turn into inf.
    milliseconds = round(Fraction(match[1]) * UNIT_MS[chosen])
    if milliseconds > MAX_DURATION_MS:
        raise ValueError(f"bad duration {text!r}: longer than {MAX_DURATION_MS} ms")
    return milliseconds


def check_retention(retention_ms: float, *, name: str = "retention") -> int:
    """``retention_ms`` as an int when raw events may be deleted that much after they
    happened: at least `MIN_RETENTION_MS` (two days).

    Args:
        retention_ms: how long raw events are kept, in ms.
        name: what the value is called where it was given, for the message
            (``"--older-than"``, ``"retention_days"``).

    Raises:
        ValueError: shorter than two days, NaN or infinite.
    """
    if not math.isfinite(retention_ms):
        raise ValueError(f"{name} must be a finite duration, got {retention_ms!r}")
    if retention_ms < MIN_RETENTION_MS:
        raise ValueError(f"{name} must be at least 2d")
    return int(retention_ms)
