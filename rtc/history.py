"""What a server remembers about sessions that are gone: recent ends and refusals.

No I/O here; time is passed in. It outlives rooms (a room is unloaded when empty, a
reconnect may come minutes later), and every table is bounded by age and by size.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

__all__ = ["RecentEnd", "SessionHistory", "SessionKey"]

# (blog_id, post_id, session_id): a session id is unique only within one room.
SessionKey = tuple[int, int, int]


@dataclass(frozen=True, slots=True)
class RecentEnd:
    """How a session's previous connection ended.

    Attributes:
        ended_at_ms: when.
        abnormal: whether it ended without a clean close.
        awareness_clock: the clock of the presence removal the server broadcast, if any.
    """

    ended_at_ms: int
    abnormal: bool
    awareness_clock: int | None = None


class SessionHistory:
    """Recent session ends (to flag reconnects) and refused sessions (to record one block each).

    Args:
        ends_memory_ms: how long a session's end is remembered (peers remember the clock of
            its presence removal for as long as they live; a reconnect must outbid it).
        blocked_memory_ms: how long a refused session is remembered, so that a client that
            keeps retrying records one `blocked` event, not one per attempt.
        max_entries: a hard cap per table; the oldest entries go first.
    """

    def __init__(
        self,
        *,
        ends_memory_ms: int = 24 * 3600_000,
        blocked_memory_ms: int = 60 * 60_000,
        max_entries: int = 50_000,
    ) -> None:
        if ends_memory_ms < 0 or blocked_memory_ms < 0 or max_entries < 1:
            raise ValueError("history windows must be >= 0 and max_entries >= 1")
        self._ends_memory_ms = ends_memory_ms
        self._blocked_memory_ms = blocked_memory_ms
        self._max_entries = max_entries
        self._ends: OrderedDict[SessionKey, RecentEnd] = OrderedDict()
        self._blocked: OrderedDict[SessionKey, int] = OrderedDict()

    def note_end(
        self, key: SessionKey, now_ms: int, *, abnormal: bool, awareness_clock: int | None = None
    ) -> None:
        self._ends.pop(key, None)
        self._ends[key] = RecentEnd(now_ms, abnormal, awareness_clock)
        self._expire(now_ms)

    def previous_end(self, key: SessionKey, now_ms: int) -> RecentEnd | None:
        """The end of this session's previous connection, if it is still remembered."""
        self._expire(now_ms)
        return self._ends.get(key)

    def note_blocked(self, key: SessionKey, now_ms: int) -> bool:
        """Remember a refusal; returns True the first time this session is refused."""
        self._expire(now_ms)
        if key in self._blocked:
            return False
        self._blocked[key] = now_ms
        return True

    def _expire(self, now_ms: int) -> None:
        # Both tables are in time order (entries are appended as time goes on).
        while self._ends:
            key, end = next(iter(self._ends.items()))
            if self._keep(len(self._ends), now_ms - end.ended_at_ms, self._ends_memory_ms):
                break
            del self._ends[key]
        while self._blocked:
            key, blocked_at = next(iter(self._blocked.items()))
            if self._keep(len(self._blocked), now_ms - blocked_at, self._blocked_memory_ms):
                break
            del self._blocked[key]

    def _keep(self, size: int, age_ms: int, window_ms: int) -> bool:
        return size <= self._max_entries and age_ms <= window_ms
