"""The arithmetic of presence figures: UTC days, duration buckets, percentiles, peaks. Pure.

No SQL and no I/O here; the stores feed these functions rows and partial sums.

Durations are kept as counts per logarithmic bucket (ratio 1.02), so daily rollups can be
summed across days; a percentile read back from buckets is the bucket's geometric middle,
within 1 % (plus rounding to a whole ms) of the exact nearest-rank value.

Peaks come from visits: a leave gives ``[ts - duration_ms, ts)``; a join that no leave
matches (still open, or lost in a crash) is open until the same session's next join, now,
or 24 hours after it joined, whichever is first. The peak of a post over a stretch of time
is the most distinct sessions (and distinct ``wp_user_id``) open at one instant.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime

__all__ = [
    "DAY_MS",
    "HISTOGRAM_EDGES_MS",
    "MAX_OPEN_MS",
    "Visit",
    "bucket_value",
    "day_from_text",
    "day_of",
    "day_text",
    "duration_bucket",
    "histogram",
    "peak",
    "percentile",
    "percentiles",
    "visits",
]

DAY_MS = 86_400_000
MAX_OPEN_MS = DAY_MS
"""How long a join without a leave counts as open at most."""

_RATIO = 1.02
_LOG_RATIO = math.log(_RATIO)

HISTOGRAM_EDGES_MS = (10_000, 30_000, 60_000, 300_000, 900_000, 1_800_000, 3_600_000, 7_200_000)
"""Upper edges of the session-length histogram; the last bin is open-ended."""


def day_of(ts_ms: int) -> int:
    """The UTC day number (days since 1970-01-01) of a timestamp in ms."""
    return ts_ms // DAY_MS


def day_text(day: int) -> str:
    """``"YYYY-MM-DD"`` of a UTC day number."""
    return datetime.fromtimestamp(day * 86_400, UTC).date().isoformat()


def day_from_text(text: str) -> int:
    """The UTC day number of ``"YYYY-MM-DD"``.

    Raises:
        ValueError: not such a date.
    """
    return (date.fromisoformat(text) - date(1970, 1, 1)).days


def duration_bucket(duration_ms: int) -> int:
    """The bucket of a duration: 0 for 0 ms, else ``1 + floor(log_1.02(ms))``."""
    if duration_ms < 1:
        return 0
    return 1 + math.floor(math.log(duration_ms) / _LOG_RATIO)


def bucket_value(bucket: int) -> int:
    """The duration a bucket stands for: its geometric middle, in ms."""
    if bucket <= 0:
        return 0
    value: float = _RATIO ** (bucket - 1 + 0.5)
    return round(value)


def percentile(buckets: Mapping[int, int], percent: int) -> int | None:
    """Nearest-rank ``percent``-th percentile of a bucket histogram (None when empty).

    The rank is ``ceil(percent * total / 100)``, computed in integers so that no float
    rounding moves it: the first bucket whose running count reaches the rank holds it.
    """
    return percentiles(buckets, (percent,))[0]


def percentiles(buckets: Mapping[int, int], percents: Sequence[int]) -> list[int | None]:
    """`percentile` for each of ``percents``, in one pass over the buckets."""
    total = sum(buckets.values())
    if total == 0:
        return [None] * len(percents)
    ranks = [max(-(-percent * total // 100), 1) for percent in percents]
    pending = sorted(range(len(ranks)), key=ranks.__getitem__)  # indexes, lowest rank first
    found: list[int | None] = [None] * len(ranks)
    seen = 0
    for bucket in sorted(buckets):
        seen += buckets[bucket]
        while pending and seen >= ranks[pending[0]]:
            found[pending.pop(0)] = bucket_value(bucket)
        if not pending:
            break
    return found


def histogram(buckets: Mapping[int, int]) -> list[dict[str, int | None]]:
    """Counts per `HISTOGRAM_EDGES_MS` bin: ``[{"le_ms": edge or None, "count": n}, ...]``."""
    counts = [0] * (len(HISTOGRAM_EDGES_MS) + 1)
    for bucket, count in buckets.items():
        value = bucket_value(bucket)
        index = next(
            (i for i, edge in enumerate(HISTOGRAM_EDGES_MS) if value <= edge),
            len(HISTOGRAM_EDGES_MS),
        )
        counts[index] += count
    edges: list[int | None] = [*HISTOGRAM_EDGES_MS, None]
    return [{"le_ms": edge, "count": count} for edge, count in zip(edges, counts, strict=True)]


@dataclass(frozen=True, slots=True)
class Visit:
    """One session's presence in a post, from ``start`` to ``end`` (ms, end excluded)."""

    session: object
    user: int | None
    start: int
    end: int


def visits(
    joins: Iterable[tuple[object, int | None, int]],
    leaves: Iterable[tuple[object, int | None, int, int | None]],
    *,
    now_ms: int,
) -> list[Visit]:
    """Visits of one post from its joins ``(session, user, ts)`` and leaves
    ``(session, user, ts, duration_ms)``.

    A leave pairs with the join of its session at ``ts - duration_ms`` (the server sets both
    from the same clock reading); a leave without ``duration_ms`` counts as a zero visit.
    Times are whole milliseconds, and a session is present in every millisecond from its
    join's to its leave's, both included: a visit ends one millisecond after its leave's
    ``ts``. So a visit that began and ended within one millisecond still counts, and two
    sessions both present in some millisecond count as together (the clock cannot order
    them within it).
    """
    result: list[Visit] = []
    started: set[tuple[object, int]] = set()
    for session, user, ts, duration in leaves:
        start = ts - duration if duration is not None and duration >= 0 else ts
        started.add((session, start))
        result.append(Visit(session, user, start, ts + 1))
    open_joins: dict[object, list[tuple[int, int | None]]] = {}
    for session, user, ts in joins:
        open_joins.setdefault(session, []).append((ts, user))
    for session, entries in open_joins.items():
        entries.sort(key=lambda entry: entry[0])
        for index, (ts, user) in enumerate(entries):
            if (session, ts) in started:
                continue
            end = min(now_ms, ts + MAX_OPEN_MS)
            if index + 1 < len(entries):
                end = min(end, entries[index + 1][0])
            if end > ts:
                result.append(Visit(session, user, ts, end))
    return result


def peak(post_visits: Iterable[Visit], start: int, end: int) -> tuple[int, int]:
    """The most distinct sessions and distinct users open at once within ``[start, end)``."""
    edges: list[tuple[int, int, object, int | None]] = []
    for visit in post_visits:
        lo, hi = max(visit.start, start), min(visit.end, end)
        if lo < hi:
            # At one instant, ends come before starts: [a, b) and [b, c) never overlap.
            edges.append((lo, 1, visit.session, visit.user))
            edges.append((hi, 0, visit.session, visit.user))
    edges.sort(key=lambda edge: (edge[0], edge[1]))
    sessions: Counter[object] = Counter()
    users: Counter[int] = Counter()
    most_sessions = most_users = 0
    for _, opening, session, user in edges:
        step = 1 if opening else -1
        sessions[session] += step
        if sessions[session] == 0:
            del sessions[session]
        if user is not None:
            users[user] += step
            if users[user] == 0:
                del users[user]
        if opening:
            most_sessions = max(most_sessions, len(sessions))
            most_users = max(most_users, len(users))
    return most_sessions, most_users
