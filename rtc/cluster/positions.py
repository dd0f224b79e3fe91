"""Where a reader stands in a room's stream, and whether entries were lost on the way. No I/O.

Stream entry ids, a followed room's position, what ``XINFO STREAM`` says about a stream, the
gap decision (`judge`), the shape of an ``XREAD`` reply, and the trimming arithmetic. The
Redis side (reading, checking, writing) is in `rtc.cluster.streams` and
`rtc.cluster.publisher`.

The gap decision compares the count of entries a reader consumed with the count the stream
removed from its head (``entries-added - length``, Redis >= 7.0): more removed than consumed
is a gap, and reading goes on from the first entry left. A stream that vanished or went
backwards is a reset: reading goes on from its end.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ZERO",
    "RoomPosition",
    "StreamId",
    "StreamInfo",
    "id_before",
    "judge",
    "parse_stream_id",
    "read_batches",
    "trim_floor",
]

StreamId = tuple[int, int]
ZERO = b"0-0"


def parse_stream_id(value: bytes | str) -> StreamId:
    """``(milliseconds, sequence)`` of a stream entry id such as ``b"1700000000000-3"``.

    Raises:
        ValueError: not an entry id.
    """
    text = value.decode("ascii") if isinstance(value, bytes) else value
    milliseconds, separator, sequence = text.partition("-")
    if not (separator and milliseconds.isdigit() and sequence.isdigit()):
        raise ValueError(f"not a stream id: {text!r}")
    return int(milliseconds), int(sequence)


@dataclass(slots=True)
class RoomPosition:
    """A followed room: where its reading stands."""

    name: str  # the stream's key
    position: bytes | None  # the last entry id consumed; None: not known yet (Redis down)
    consumed: int  # how many entries the stream had added up to `position` (entries-added)
    live_at: float  # monotonic: when a read or check last covered it
    lag_ms: int = 0  # how old its last entry was when read

    @property
    def position_id(self) -> StreamId:
        return parse_stream_id(self.position or ZERO)


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """What ``XINFO STREAM`` says about a room's stream (None fields: it does not exist)."""

    last_id: bytes
    added: int | None  # entries-added (Redis >= 7.0)
    length: int
    first_id: bytes | None

    @classmethod
    def from_reply(cls, info: Any) -> StreamInfo:
        """From redis-py's parsed ``XINFO STREAM`` reply."""
        first = info.get("first-entry")
        added = info.get("entries-added")
        last_id = info["last-generated-id"]
        return cls(
            last_id=last_id.encode() if isinstance(last_id, str) else bytes(last_id),
            added=int(added) if added is not None else None,
            length=int(info["length"]),
            first_id=first[0] if first else None,
        )


def judge(room: RoomPosition, stream: StreamInfo | None, *, restarted: bool) -> bool:
    """Move `room` to where reading can safely go on; True when entries may be lost (gap).

    `stream` None: it does not exist. `restarted`: Redis restarted empty (or the position
    was never known), so reading goes on from the stream's end, with a resync.
    """
    if restarted or room.position is None:
        if stream is None:
            room.position, room.consumed = ZERO, 0
        else:
            room.position, room.consumed = stream.last_id, stream.added or 0
        return True
    if stream is None:  # vanished (or expired): read the new one from its start
        gap = room.position != ZERO or room.consumed != 0
        room.position, room.consumed = ZERO, 0
        return gap
    position = room.position_id
    if parse_stream_id(stream.last_id) < position or (
        stream.added is not None and stream.added < room.consumed
    ):  # reset: read on from its end
        room.position, room.consumed = stream.last_id, stream.added or 0
        return True
    if stream.added is not None:
        removed = stream.added - stream.length
        gap = removed > room.consumed  # trimmed past what was read
    else:  # before Redis 7.0 there is no count: a position older than the first entry
        gap = stream.first_id is not None and parse_stream_id(stream.first_id) > position
    if gap:  # read on from the first entry left
        if stream.first_id is None:
            room.position, room.consumed = stream.last_id, stream.added or 0
        else:
            room.position = id_before(parse_stream_id(stream.first_id))
            room.consumed = (stream.added or stream.length) - stream.length
    return gap


def id_before(entry: StreamId) -> bytes:
    """The greatest id below `entry`: reading from it starts at `entry`."""
    milliseconds, sequence = entry
    if sequence > 0:
        return f"{milliseconds}-{sequence - 1}".encode()
    return f"{max(0, milliseconds - 1)}-{2**64 - 1}".encode() if milliseconds else ZERO


def read_batches(reply: Any) -> Iterator[tuple[bytes, list[Any]]]:
    """``(stream name, [(id, fields), ...])`` from an XREAD reply: RESP2 as Redis sends it
    (``[[name, [[id, [field, value, ...]], ...]], ...]``, fields a flat list) or as redis-py
    parses it, RESP2 or RESP3 shaped (fields a dict)."""
    if not reply:
        return
    items = reply.items() if isinstance(reply, dict) else ((item[0], item[1]) for item in reply)
    for name, value in items:
        entries = value
        # redis-py wraps a RESP3 stream's entries in one more list (an entry is an id first).
        if entries and isinstance(entries[0], list) and (
            not entries[0] or not isinstance(entries[0][0], bytes | str)
        ):
            entries = entries[0]
        yield (name if isinstance(name, bytes) else str(name).encode()), list(entries or [])


def trim_floor(redis_now_ms: int | None, retention_ms: int) -> int | None:
    """The ``MINID`` an ``XADD`` trims to: no entry younger than `retention_ms` (Redis
    clock) goes; None until Redis's clock is known."""
    if redis_now_ms is None:
        return None
    return max(0, redis_now_ms - retention_ms)
