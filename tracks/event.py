"""The event model: `Event`, its validation and its JSON form. Pure: no I/O here.

The naming rules are Automattic Tracks' own: an event name has at least three
lowercase parts joined by underscores (``jetpack_rtc_join``); a property name is
lowercase snake case, and a leading underscore is reserved for envelope fields
(``_en``, ``_ts``, ``_ui``...) that encoders add on the wire.
"""

from __future__ import annotations

import json
import math
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TypeAlias, Union

__all__ = ["Event", "EventError", "JSONValue", "json_text", "now_ms"]

JSONValue: TypeAlias = Union[  # noqa: UP007 - a recursive alias needs Union's string forward refs
    bool, int, float, str, Sequence["JSONValue"], Mapping[str, "JSONValue"], None
]
"""A JSON value. Sequences and mappings are accepted read-only, so `list[int]` fits."""

EVENT_NAME = re.compile(r"^(([a-z0-9]+)_){2}([a-z0-9_]+)$")
PROPERTY_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")
JSON_KEYS = frozenset({"event_id", "name", "ts", "props"})


class EventError(ValueError):
    """An event, or one of its parts, breaks the Tracks rules. The message names the part."""


def now_ms() -> int:
    """Milliseconds since the Unix epoch, the unit of `Event.ts`.

    From `time.time_ns`, so integer arithmetic all the way (``time.time() * 1000`` can
    be one ms off through float rounding).
    """
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True, init=False)
class Event:
    """One analytics event. Immutable; validated at creation.

    Args:
        name: Tracks event name, e.g. ``jetpack_rtc_join``.
        props: Property values (JSON values). Properties whose value is ``None`` are
            dropped, never stored as ``null``.
        ts: Milliseconds since the Unix epoch; defaults to now.
        event_id: Idempotency key (a UUID string); defaults to a random UUID. Pass a
            deterministic one (e.g. ``uuid5``) so a logical event is never counted twice.
        prefix: If given, ``name`` must start with it (the server passes ``jetpack_rtc_``).

    Raises:
        EventError: a `ValueError` naming the offending part.
    """

    name: str
    props: Mapping[str, JSONValue] = field(hash=False)
    ts: int
    event_id: str

    def __init__(
        self,
        name: str,
        props: Mapping[str, JSONValue],
        *,
        ts: int | None = None,
        event_id: str | None = None,
        prefix: str | None = None,
    ) -> None:
        _check_name(name, prefix)
        clean = _check_props(props)
        if ts is None:
            ts = now_ms()
        elif isinstance(ts, bool) or not isinstance(ts, int) or ts < 0:
            raise EventError(f"event {name}: ts must be a non-negative int of ms, got {ts!r}")
        event_id = str(uuid.uuid4()) if event_id is None else _check_event_id(name, event_id)
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "props", MappingProxyType(clean))
        object.__setattr__(self, "ts", ts)
        object.__setattr__(self, "event_id", event_id)

    def __hash__(self) -> int:
        # Equal events share an event_id, so this agrees with the generated __eq__.
        return hash(self.event_id)

    def __repr__(self) -> str:
        # Property values stay out of reprs, which end up in logs.
        return f"Event(name={self.name!r}, ts={self.ts}, event_id={self.event_id!r})"

    def to_json(self) -> dict[str, JSONValue]:
        """The event as exactly ``{"event_id", "name", "ts", "props"}`` of plain JSON types."""
        return {
            "event_id": self.event_id,
            "name": self.name,
            "ts": self.ts,
            "props": self.props_json(),
        }

    def props_json(self) -> dict[str, JSONValue]:
        """The properties as a fresh plain ``dict`` of plain JSON types."""
        return {key: _thaw(value) for key, value in self.props.items()}

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> Event:
        """Rebuild an event from `to_json` output, validating it again.

        Raises:
            EventError: missing or unknown keys, or any rule broken.
        """
        if not isinstance(data, Mapping):
            raise EventError(f"event JSON must be an object, got {type(data).__name__}")
        keys = set(data)
        if keys != JSON_KEYS:
            missing = sorted(JSON_KEYS - keys)
            unknown = sorted(str(key) for key in keys - JSON_KEYS)
            raise EventError(f"event JSON keys: missing {missing}, unknown {unknown}")
        name, props, ts, event_id = data["name"], data["props"], data["ts"], data["event_id"]
        if not isinstance(name, str):
            raise EventError(f"event JSON name must be a string, got {name!r}")
        if not isinstance(props, Mapping):
            raise EventError(f"event {name}: props must be an object")
        if not isinstance(event_id, str):
            raise EventError(f"event {name}: event_id must be a string, got {event_id!r}")
        if isinstance(ts, bool) or not isinstance(ts, int):
            raise EventError(f"event {name}: ts must be an int, got {ts!r}")
        return cls(name, props, ts=ts, event_id=event_id)


def _check_name(name: object, prefix: str | None) -> None:
    if not isinstance(name, str):
        raise EventError(f"event name must be a string, got {type(name).__name__}")
    if not EVENT_NAME.match(name):
        raise EventError(
            f"event name {name!r} must match {EVENT_NAME.pattern} "
            "(at least three lowercase parts, e.g. jetpack_rtc_join)"
        )
    if prefix is not None and not name.startswith(prefix):
        raise EventError(f"event name {name!r} must start with {prefix!r}")


def _check_event_id(name: str, event_id: object) -> str:
    if not isinstance(event_id, str):
        raise EventError(f"event {name}: event_id must be a UUID string, got {event_id!r}")
    try:
        return str(uuid.UUID(event_id))
    except ValueError:
        raise EventError(f"event {name}: event_id {event_id!r} is not a UUID") from None


def _check_props(props: object) -> dict[str, JSONValue]:
    if not isinstance(props, Mapping):
        raise EventError(f"props must be a mapping, got {type(props).__name__}")
    clean: dict[str, JSONValue] = {}
    for key, value in props.items():
        if not isinstance(key, str) or not PROPERTY_NAME.match(key):
            raise EventError(f"property name {key!r} must match {PROPERTY_NAME.pattern}")
        if key.startswith("_"):
            raise EventError(f"property name {key!r}: a leading '_' is reserved for the envelope")
        if value is None:
            continue
        clean[key] = _freeze(value, key)
    return clean


def _freeze(value: object, path: str) -> JSONValue:
    """Validate a JSON value and return an immutable copy of it."""
    # Exact-type checks first: they cover nearly every real property cheaply.
    kind = type(value)
    if kind is str or kind is int or kind is bool:
        return value  # type: ignore[return-value]
    if kind is float:
        if not math.isfinite(value):  # type: ignore[arg-type]
            raise EventError(f"property {path}: {value!r} is not a JSON number")
        return value  # type: ignore[return-value]
    if value is None:
        return None
    if isinstance(value, (str, bytes, bytearray)):
        if isinstance(value, str):
            return str(value)
        raise EventError(f"property {path}: bytes are not a JSON value")
    if isinstance(value, bool | int):
        return int(value) if not isinstance(value, bool) else bool(value)
    if isinstance(value, float):
        return _freeze(float(value), path)
    if isinstance(value, Mapping):
        items: dict[str, JSONValue] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise EventError(f"property {path}: object key {key!r} is not a string")
            items[key] = _freeze(item, f"{path}.{key}")
        return MappingProxyType(items)
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(item, f"{path}[{index}]") for index, item in enumerate(value))
    raise EventError(f"property {path}: {type(value).__name__} is not a JSON value")


def _thaw(value: JSONValue) -> JSONValue:
    if isinstance(value, Mapping):
        return {key: _thaw(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return [_thaw(item) for item in value]
    return value


def json_text(value: JSONValue) -> str:
    """Compact JSON, UTF-8 kept as is: the one encoding every store and wire format uses."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
