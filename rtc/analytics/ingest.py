"""Client event ingest: parsing a browser's batch, deduplicating it, deciding each event.

No I/O here. A batch is `{"events": [{"event_id", "name", "ts", "props"}, ...]}`. Events are
deduplicated by `event_id`; a client that retries without stable ids is deduplicated by a
time bucket instead: the id is derived from the event's name, its props and
`floor(ts / window)`, so two sends of the same event within one window are one event.
"""

from __future__ import annotations

import json
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tracks import Event

__all__ = ["BatchError", "RecentIds", "Rejection", "bucket_event_id", "parse_batch"]

# Namespace of ids derived from time buckets (fixed forever: changing it re-counts events).
BUCKET_NAMESPACE = uuid.UUID("0b6f57a2-3c44-4c1e-8f0e-2a3f5a61d3c7")


class BatchError(ValueError):
    """The body is not a batch at all (HTTP 400)."""


@dataclass(frozen=True, slots=True)
class Rejection:
    index: int
    reason: str

    def to_json(self) -> dict[str, object]:
        return {"index": self.index, "reason": self.reason}


def bucket_event_id(name: str, props: Mapping[str, Any], ts: int, window_ms: int) -> str:
    """A deterministic id for an event without one: same name, props and time bucket."""
    canonical = json.dumps(
        [name, dict(props), ts // window_ms], sort_keys=True, separators=(",", ":")
    )
    return str(uuid.uuid5(BUCKET_NAMESPACE, canonical))


def parse_batch(
    body: bytes, *, max_events: int, window_ms: int, now_ms: int, max_age_ms: int
) -> tuple[list[tuple[int, Event]], list[Rejection]]:
    """Parse a batch into valid events (with their index) and rejections.

    Raises:
        BatchError: the body is not JSON `{"events": [...]}` or has too many events.
    """
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise BatchError("body is not JSON") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("events"), list):
        raise BatchError('body must be {"events": [...]}')
    items = payload["events"]
    if len(items) > max_events:
        raise BatchError(f"at most {max_events} events per batch")
    events: list[tuple[int, Event]] = []
    rejections: list[Rejection] = []
    for index, item in enumerate(items):
        try:
            events.append((index, _event(item, window_ms, now_ms, max_age_ms)))
        except (ValueError, TypeError) as error:
            rejections.append(Rejection(index, str(error)))
    return events, rejections


def _event(item: object, window_ms: int, now_ms: int, max_age_ms: int) -> Event:
    if not isinstance(item, dict):
        raise ValueError("an event must be an object")
    name, props, ts = item.get("name"), item.get("props", {}), item.get("ts", now_ms)
    if not isinstance(name, str):
        raise ValueError("name must be a string")
    if not isinstance(props, dict):
        raise ValueError("props must be an object")
    if not isinstance(ts, int) or isinstance(ts, bool):
        raise ValueError("ts must be an integer (ms since the epoch)")
    if ts > now_ms + 60_000 or ts < now_ms - max_age_ms:
        raise ValueError("ts is too far from the server's clock")
    if "origin" in props:
        raise ValueError("prop 'origin' is reserved")
    props = {**props, "origin": "client"}
    event_id = item.get("event_id")
    if event_id is None:
        event_id = bucket_event_id(name, props, ts, window_ms)
    elif not isinstance(event_id, str):
        raise ValueError("event_id must be a UUID string")
    return Event(name, props, ts=ts, event_id=event_id)


class RecentIds:
    """The event ids seen lately (bounded, oldest forgotten first), to report duplicates."""

    def __init__(self, capacity: int = 100_000) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self._capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._ids

    def add(self, event_id: str) -> bool:
        """Remember an id; False when it was already there (a duplicate)."""
        if event_id in self._ids:
            self._ids.move_to_end(event_id)
            return False
        self._ids[event_id] = None
        if len(self._ids) > self._capacity:
            self._ids.popitem(last=False)
        return True
