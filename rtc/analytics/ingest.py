"""Client event ingest: a browser's batch, checked prop by prop, deduplicated, decided.

No I/O here. A batch is `{"events": [{"event_id", "name", "ts", "props"}, ...]}`, already
decoded from JSON (`rtc.http.request.parse_json`, nested at most `BATCH_DEPTH`). Events are
deduplicated by `event_id`; a client that retries without stable ids is deduplicated by a
time bucket instead: the id is derived from the event's name, its props and
`floor(ts / window)`, so two sends of the same event within one window are one event.

What a browser may say is bounded (README, "Client events"): ids are integers in range (they
are indexed columns downstream: an id past 2**63 - 1 would fail every batch it is written
with), codes are short lower-case tokens (they become stats keys), and free text is short
and printable. With tokens on, the user is the token's, whatever the browser says.
"""

from __future__ import annotations

import json
import re
import unicodedata
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rtc.ids import MAX_ID, id_from_json
from tracks import Event

__all__ = [
    "BATCH_DEPTH",
    "MAX_TEXT",
    "BatchError",
    "RecentIds",
    "Rejection",
    "bucket_event_id",
    "check_props",
    "parse_batch",
]

# Namespace of ids derived from time buckets (fixed forever: changing it re-counts events).
BUCKET_NAMESPACE = uuid.UUID("0b6f57a2-3c44-4c1e-8f0e-2a3f5a61d3c7")

MAX_PROPS = 32  # props of one event
MAX_NAME = 128  # characters of an event name
MAX_KEY = 64  # characters of a prop name or of a key inside an object prop
MAX_TEXT = 256  # characters of a free-text string
MAX_ITEMS = 64  # items of one list or object prop
MAX_NESTING = 3  # lists and objects inside a prop, levels
# The batch object, its list, an event, its props, then the props' own nesting; one more,
# so that a prop nested too deep is that event's rejection, not the whole batch's 400.
BATCH_DEPTH = 4 + MAX_NESTING + 1

SESSION_ID_MAX = 2**32 - 1  # a Yjs clientID is a uint32
CODE = re.compile(r"[a-z0-9_.-]{1,64}")
CODE_PROPS = frozenset({"error_code", "code"})
CLOSE_CODES = range(1000, 5000)  # RFC 6455 §7.4: 1000-4999
# Unicode categories never accepted in text: controls, format characters (bidi overrides,
# zero-width), lone surrogates (unencodable: a store would fail on them), private use.
_BANNED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co"})


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
    payload: object,
    *,
    max_events: int,
    window_ms: int,
    now_ms: int,
    max_age_ms: int,
    user_id: int | None = None,
) -> tuple[list[tuple[int, Event]], list[Rejection]]:
    """Parse a decoded batch into valid events (with their index) and rejections.

    Args:
        payload: the decoded JSON body.
        max_events: events one batch may hold.
        window_ms: the dedupe bucket of events sent without an id.
        now_ms: the server's clock.
        max_age_ms: how old an event may be.
        user_id: the user the sender's token names: every event's `wp_user_id` becomes it.

    Raises:
        BatchError: the body is not `{"events": [...]}` or has too many events.
    """
    if not isinstance(payload, dict) or not isinstance(payload.get("events"), list):
        raise BatchError('body must be {"events": [...]}')
    items = payload["events"]
    if len(items) > max_events:
        raise BatchError(f"at most {max_events} events per batch")
    events: list[tuple[int, Event]] = []
    rejections: list[Rejection] = []
    for index, item in enumerate(items):
        try:
            events.append((index, _event(item, window_ms, now_ms, max_age_ms, user_id)))
        except (ValueError, TypeError) as error:
            rejections.append(Rejection(index, str(error)))
    return events, rejections


def _event(
    item: object, window_ms: int, now_ms: int, max_age_ms: int, user_id: int | None
) -> Event:
    if not isinstance(item, dict):
        raise ValueError("an event must be an object")
    name, props, ts = item.get("name"), item.get("props", {}), item.get("ts", now_ms)
    if not isinstance(name, str):
        raise ValueError("name must be a string")
    if len(name) > MAX_NAME:
        raise ValueError(f"name is longer than {MAX_NAME} characters")
    if not isinstance(props, dict):
        raise ValueError("props must be an object")
    if not isinstance(ts, int) or isinstance(ts, bool):
        raise ValueError("ts must be an integer (ms since the epoch)")
    if ts > now_ms + 60_000 or ts < now_ms - max_age_ms:
        raise ValueError("ts is too far from the server's clock")
    if "origin" in props:
        raise ValueError("prop 'origin' is reserved")
    check_props(props)
    props = {**props, "origin": "client"}
    if user_id is not None:
        props["wp_user_id"] = user_id  # the token's user, not the browser's word
    event_id = item.get("event_id")
    if event_id is None:
        event_id = bucket_event_id(name, props, ts, window_ms)
    elif not isinstance(event_id, str):
        raise ValueError("event_id must be a UUID string")
    return Event(name, props, ts=ts, event_id=event_id)


def check_props(props: Mapping[str, object]) -> None:
    """Refuse what a browser may not say in an event's props.

    Raises:
        ValueError: naming the prop and the rule it breaks.
    """
    if len(props) > MAX_PROPS:
        raise ValueError(f"at most {MAX_PROPS} props")
    for name, value in props.items():
        if len(name) > MAX_KEY:
            raise ValueError(f"prop names are at most {MAX_KEY} characters")
        if value is None:
            continue
        if name == "session_id":
            if not (type(value) is int and 0 <= value <= SESSION_ID_MAX):
                raise ValueError("prop session_id must be an integer from 0 to 2**32 - 1")
        elif name.endswith("_id"):
            if id_from_json(value) is None:
                raise ValueError(f"prop {name} must be a positive integer below 2**63")
        elif name in CODE_PROPS:
            if not (isinstance(value, str) and CODE.fullmatch(value)):
                raise ValueError(f"prop {name} must be 1-64 characters of a-z 0-9 _ . -")
        elif name == "close_code":
            if not (type(value) is int and value in CLOSE_CODES):
                raise ValueError("prop close_code must be an integer from 1000 to 4999")
        else:
            _check_value(name, value, 0)


def _check_value(path: str, value: object, depth: int) -> None:
    if isinstance(value, str):
        _check_text(path, value, MAX_TEXT)
    elif isinstance(value, bool) or value is None:
        return
    elif isinstance(value, int):
        if not -MAX_ID - 1 <= value <= MAX_ID:
            raise ValueError(f"prop {path}: integers must fit in 64 bits")
    elif isinstance(value, float):
        return  # the JSON parser admits finite numbers only
    elif isinstance(value, list | dict):
        if depth >= MAX_NESTING:
            raise ValueError(f"prop {path}: nested deeper than {MAX_NESTING}")
        if len(value) > MAX_ITEMS:
            raise ValueError(f"prop {path}: more than {MAX_ITEMS} items")
        if isinstance(value, dict):
            for key, item in value.items():
                _check_text(f"{path} key", key, MAX_KEY)
                _check_value(f"{path}.{key}", item, depth + 1)
        else:
            for index, item in enumerate(value):
                _check_value(f"{path}[{index}]", item, depth + 1)
    else:
        raise ValueError(f"prop {path}: not a JSON value")


def _check_text(path: str, text: str, limit: int) -> None:
    if len(text) > limit:
        raise ValueError(f"prop {path}: text is longer than {limit} characters")
    if not text.isprintable() and any(
        unicodedata.category(char) in _BANNED_CATEGORIES for char in text
    ):
        raise ValueError(f"prop {path}: control or format characters are not allowed")


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
