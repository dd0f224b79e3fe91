"""What a server remembers about sessions that are gone: recent ends and refusals.

No I/O here; time is passed in. It outlives rooms (a room is unloaded when empty, a
reconnect may come minutes later), and every table is bounded by age and by size.
"""

from __future__ import annotations

import mmap
import secrets
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


_WORD = 1 << 64
_EMPTY = -1


def _fits(key: SessionKey, end: RecentEnd) -> bool:
    clock = end.awareness_clock
    return (
        all(0 <= part < _WORD for part in key)
        and 0 <= end.ended_at_ms < _WORD >> 2  # the top bit marks an emptied slot
        and (clock is None or 0 <= clock < _WORD - 1)
    )


class _EndRing:
    """Session ends in fixed-size machine words, oldest first: no Python object per entry.

    Every session that ends is remembered (a day, or until `capacity` newer ones came), so
    a server with steady churn fills this table whatever else it does. Kept as Python
    objects (an ordered dict of packed ints) an entry cost 181 bytes (8.6 MiB at 50,000);
    here it is 40 bytes of ring (three ids, the end time with the abnormal bit, the clock
    plus one) and two or more 4-byte buckets of hash index (2.4 MiB in all at 50,000), in
    anonymous maps whose pages take memory as they are first written.

    Slots are used in time order; an end noted again for the same session empties its old
    slot, which leaves the ring when it is the oldest. Lookups go through an
    open-addressing index (linear probing, deletion by backward shift) whose hash is salted
    per ring: session ids come from clients, and ids crafted to share buckets would make
    long probe chains.
    """

    _FIELDS = 5  # blog_id, post_id, session_id, ended_at_ms << 1 | abnormal, clock + 1

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._buckets = 1 << (2 * capacity - 1).bit_length()  # at most half full
        self._salt = secrets.randbits(64)
        self._oldest = 0  # slot of the oldest entry
        self._used = 0  # slots from the oldest on, live or emptied
        # Anonymous maps: their pages take memory once written. The index holds slot + 1
        # (its zero pages are all empty buckets).
        self._maps = (mmap.mmap(-1, 8 * self._FIELDS * capacity), mmap.mmap(-1, 4 * self._buckets))
        self._words = memoryview(self._maps[0]).cast("Q")
        self._index = memoryview(self._maps[1]).cast("i")

    def _bucket_of(self, blog_id: int, post_id: int, session_id: int) -> int:
        return hash((self._salt, blog_id, post_id, session_id)) & (self._buckets - 1)

    def _find(self, key: SessionKey) -> tuple[int, int]:
        """(bucket, slot) of `key`, or (its free bucket, _EMPTY)."""
        words, index = self._words, self._index
        mask = self._buckets - 1
        bucket = self._bucket_of(*key)
        for _ in range(self._buckets):  # the index is never full: this ends far sooner
            stored = index[bucket]
            if stored == 0:
                return bucket, _EMPTY
            slot = stored - 1
            at = slot * self._FIELDS
            if (words[at], words[at + 1], words[at + 2]) == key:
                return bucket, slot
            bucket = (bucket + 1) & mask
        raise AssertionError("the session history's index is full")

    def get(self, key: SessionKey) -> RecentEnd | None:
        _, slot = self._find(key)
        if slot == _EMPTY:
            return None
        words = self._words
        at = slot * self._FIELDS
        clock = words[at + 4]
        return RecentEnd(words[at + 3] >> 1, bool(words[at + 3] & 1), clock - 1 if clock else None)

    def put(self, key: SessionKey, end: RecentEnd) -> None:
        """Remember `end` as the newest entry (the caller checked that it `_fits`)."""
        self.remove(key)
        if self._used == self._capacity:
            self._drop_oldest()
        words, index = self._words, self._index
        slot = (self._oldest + self._used) % self._capacity
        at = slot * self._FIELDS
        words[at], words[at + 1], words[at + 2] = key
        words[at + 3] = end.ended_at_ms << 1 | end.abnormal
        words[at + 4] = 0 if end.awareness_clock is None else end.awareness_clock + 1
        bucket, _ = self._find(key)
        index[bucket] = slot + 1
        self._used += 1

    def remove(self, key: SessionKey) -> None:
        bucket, slot = self._find(key)
        if slot == _EMPTY:
            return
        words, index = self._words, self._index
        words[slot * self._FIELDS + 3] |= 1 << 63  # emptied: the slot waits to be the oldest
        mask = self._buckets - 1
        hole, probe = bucket, bucket
        for _ in range(self._buckets):  # backward shift: no probe chain is broken
            probe = (probe + 1) & mask
            stored = index[probe]
            if stored == 0:
                break
            at = (stored - 1) * self._FIELDS
            home = self._bucket_of(words[at], words[at + 1], words[at + 2])
            if (probe - home) & mask >= (probe - hole) & mask:
                index[hole] = stored
                hole = probe
        index[hole] = 0

    def oldest_end_ms(self) -> int | None:
        """When the oldest remembered session ended; emptied slots at the front go."""
        words = self._words
        while self._used:
            stamp = words[self._oldest * self._FIELDS + 3]
            if not stamp >> 63:
                return stamp >> 1
            self._oldest = (self._oldest + 1) % self._capacity
            self._used -= 1
        return None

    def _drop_oldest(self) -> None:
        words = self._words
        at = self._oldest * self._FIELDS
        if not words[at + 3] >> 63:
            self.remove((words[at], words[at + 1], words[at + 2]))
        self._oldest = (self._oldest + 1) % self._capacity
        self._used -= 1

    def drop_oldest(self) -> None:
        if self.oldest_end_ms() is not None:
            self._drop_oldest()

    def __len__(self) -> int:
        return self._used


# The refusals' table (small: a session is refused only at a limit) keys a session by one
# int where its ids are all in [0, 2**64), as it came otherwise.
_ID_BITS = 64


def _pack_key(key: SessionKey) -> int | SessionKey:
    blog_id, post_id, session_id = key
    limit = 1 << _ID_BITS
    if 0 <= blog_id < limit and 0 <= post_id < limit and 0 <= session_id < limit:
        return (blog_id << (2 * _ID_BITS)) | (post_id << _ID_BITS) | session_id
    return key


class SessionHistory:
    """Recent session ends (to flag reconnects) and refused sessions (to record one block each).

    Args:
        ends_memory_ms: how long a session's end is remembered (peers remember the clock of
            its presence removal for as long as they live; a reconnect must outbid it).
        blocked_memory_ms: how long a refused session is remembered, so that a client that
            keeps retrying records one `blocked` event, not one per attempt.
        max_entries: a hard cap per table; the oldest entries go first (an end noted again
            for the same session keeps its old place in the count until that place is the
            oldest).
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
        self._ends = _EndRing(max_entries)
        # Ends whose ids or clock do not fit the ring's words (the server's own parsing never
        # makes them), remembered exactly all the same.
        self._odd_ends: OrderedDict[SessionKey, RecentEnd] = OrderedDict()
        self._blocked: OrderedDict[int | SessionKey, int] = OrderedDict()

    def note_end(
        self, key: SessionKey, now_ms: int, *, abnormal: bool, awareness_clock: int | None = None
    ) -> None:
        end = RecentEnd(now_ms, abnormal, awareness_clock)
        self._ends.remove(key)
        self._odd_ends.pop(key, None)
        if _fits(key, end):
            self._ends.put(key, end)
        else:
            self._odd_ends[key] = end
        self._expire(now_ms)

    def previous_end(self, key: SessionKey, now_ms: int) -> RecentEnd | None:
        """The end of this session's previous connection, if it is still remembered."""
        self._expire(now_ms)
        return self._ends.get(key) or self._odd_ends.get(key)

    def note_blocked(self, key: SessionKey, now_ms: int) -> bool:
        """Remember a refusal; returns True the first time this session is refused."""
        self._expire(now_ms)
        packed = _pack_key(key)
        if packed in self._blocked:
            return False
        self._blocked[packed] = now_ms
        return True

    def _expire(self, now_ms: int) -> None:
        # Every table is in time order (entries are appended as time goes on).
        while (oldest := self._ends.oldest_end_ms()) is not None:
            if now_ms - oldest <= self._ends_memory_ms:
                break
            self._ends.drop_oldest()
        while self._odd_ends:
            odd_key, end = next(iter(self._odd_ends.items()))
            if self._keep(len(self._odd_ends), now_ms - end.ended_at_ms, self._ends_memory_ms):
                break
            del self._odd_ends[odd_key]
        while self._blocked:
            key, blocked_at = next(iter(self._blocked.items()))
            if self._keep(len(self._blocked), now_ms - blocked_at, self._blocked_memory_ms):
                break
            del self._blocked[key]

    def _keep(self, size: int, age_ms: int, window_ms: int) -> bool:
        return size <= self._max_entries and age_ms <= window_ms
