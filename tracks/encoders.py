"""HTTP body encoders: a batch of events to the JSON body a backend expects. Pure: no I/O here.

Every encoder keeps the `event_id` on every event, so a batch that is re-sent
after an outage can be de-duplicated downstream.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime

from tracks.event import Event, JSONValue

__all__ = [
    "BodyEncoder",
    "GenericEncoder",
    "PostHogEncoder",
    "TracksEncoder",
    "encoder_named",
]

BodyEncoder = Callable[[Sequence[Event]], JSONValue]
"""Turns a batch into a JSON body. Any callable fits; the classes below are the built-ins."""


class GenericEncoder:
    """``{"events": [{"event_id", "name", "ts", "props"}, ...]}``: JSONL lines, batched."""

    def __call__(self, batch: Sequence[Event]) -> JSONValue:
        return {"events": [event.to_json() for event in batch]}


class TracksEncoder:
    """Automattic Tracks' batch shape.

    ``{"events": [{"_en": name, "_ts": ts, "_ui": wp_user_id, "_eid": event_id, **props}],
    "commonProps": {...}}``. ``_ui`` is present only when the event has ``wp_user_id``;
    ``_eid`` carries the idempotency key.

    Args:
        common_props: sent once per batch as ``commonProps`` (e.g. ``_ua``, ``_via_ip``).
    """

    def __init__(self, common_props: Mapping[str, JSONValue] | None = None) -> None:
        self.common_props = dict(common_props or {})

    def __call__(self, batch: Sequence[Event]) -> JSONValue:
        events: list[JSONValue] = []
        for event in batch:
            props = event.props_json()
            envelope: dict[str, JSONValue] = {"_en": event.name, "_ts": event.ts}
            if "wp_user_id" in props:
                envelope["_ui"] = props["wp_user_id"]
            envelope["_eid"] = event.event_id
            # Property names cannot start with "_", so they never clobber the envelope.
            envelope.update(props)
            events.append(envelope)
        return {"events": events, "commonProps": dict(self.common_props)}


class PostHogEncoder:
    """PostHog's batch capture API (``POST /batch/``).

    ``{"api_key", "batch": [{"event", "distinct_id", "properties", "timestamp", "uuid"}]}``;
    ``distinct_id`` is ``wp_user_id`` when known, else ``blog_id:post_id:session_id``.
    PostHog de-duplicates on ``uuid``, which is the event_id.

    Args:
        api_key: the project API key.
    """

    def __init__(self, api_key: str) -> None:
        if not api_key:
            raise ValueError("PostHogEncoder needs an api_key")
        self.api_key = api_key

    def __call__(self, batch: Sequence[Event]) -> JSONValue:
        return {
            "api_key": self.api_key,
            "batch": [
                {
                    "event": event.name,
                    "distinct_id": distinct_id(event),
                    "properties": event.props_json(),
                    "timestamp": _iso8601(event.ts),
                    "uuid": event.event_id,
                }
                for event in batch
            ],
        }


def distinct_id(event: Event) -> str:
    """The user when known, else the session within its room."""
    props = event.props
    user = props.get("wp_user_id")
    if user is not None and user != 0:
        return str(user)
    return f"{props.get('blog_id', '')}:{props.get('post_id', '')}:{props.get('session_id', '')}"


def _iso8601(ts: int) -> str:
    return datetime.fromtimestamp(ts / 1000, UTC).isoformat(timespec="milliseconds")


def encoder_named(name: str, **options: str) -> BodyEncoder:
    """A built-in encoder by name: ``generic``, ``tracks`` or ``posthog`` (needs ``api_key``)."""
    if name == "generic":
        return GenericEncoder()
    if name == "tracks":
        return TracksEncoder()
    if name == "posthog":
        return PostHogEncoder(options.get("api_key", ""))
    raise ValueError(f"unknown encoder {name!r}; expected generic, tracks or posthog")
