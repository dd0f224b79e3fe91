"""The bridge from room transitions to `tracks` events: join, blocked, connection_error, leave.

Every event carries `blog_id` and `post_id` (a session id is unique only within a room) and a
deterministic `event_id`, so the same logical event is never counted twice downstream.
Recording never blocks or raises into the editing path: a failing recorder is logged once
per burst, counted, and the room carries on.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence

from rtc.actions import Blocked, Joined, Left, Session
from rtc.analytics.capture import CaptureSettings
from rtc.analytics.feed import EventFeed
from rtc.ids import RoomKey
from rtc.metrics import Metrics
from tracks import Event, FanoutRecorder, JSONValue, Recorder
from tracks.event import now_ms
from tracks.sampling import props_in_sample
from tracks.streams import Origin, Routing, StreamConfig

__all__ = ["Tracking"]

logger = logging.getLogger(__name__)

# Namespace of the uuid5 event ids (fixed forever: changing it would re-count old events).
EVENT_NAMESPACE = uuid.UUID("6f1c1f0e-6b39-4a43-9a51-2f0b3f4f2c1e")

# A join within this long after the same session ended is flagged as a reconnect.
RECONNECT_WINDOW_MS = 5 * 60_000


class Tracking:
    """Turns what rooms decide into recorded events, the live feed and metrics.

    Args:
        recorders: the default destinations (each one's `record()` only enqueues).
        feed: the in-process stream for live viewers.
        metrics: counters to keep in step.
        prefix: prefix of every event name.
        instance: distinguishes this server process in ids of events that have no session.
        capture: per-blog capture switches and sampling (None: everything is captured).
        streams: which events are accepted and where they go (None: the defaults).
        named_recorders: the streams' other destinations, by name.
    """

    def __init__(
        self,
        recorders: Sequence[Recorder],
        *,
        feed: EventFeed,
        metrics: Metrics,
        prefix: str = "jetpack_rtc_",
        instance: str | None = None,
        capture: CaptureSettings | None = None,
        streams: StreamConfig | None = None,
        named_recorders: Mapping[str, Recorder] | None = None,
    ) -> None:
        self._named: dict[str, tuple[Recorder, ...]] = {"default": tuple(recorders)}
        for name, recorder in (named_recorders or {}).items():
            self._named[name] = (recorder,)
        # One fan-out per set of destinations a stream names, built when first used: it
        # contains a recorder that raises, so no destination can starve another.
        self._fanouts: dict[tuple[str, ...], FanoutRecorder | None] = {}
        self.streams = streams or StreamConfig.default(prefix=prefix)
        self._capture = capture
        self._feed = feed
        self._metrics = metrics
        self._prefix = prefix
        self._instance = instance or uuid.uuid4().hex

    def joined(self, joined: Joined, *, post_type: str | None) -> None:
        session = joined.session
        previous = joined.previous_end
        reconnect = previous is not None and (
            session.joined_at_ms - previous.ended_at_ms <= RECONNECT_WINDOW_MS
        )
        if previous is not None and previous.abnormal and reconnect:
            latency = (session.joined_at_ms - previous.ended_at_ms) / 1000
            self._metrics.reconnect_latency.observe(max(latency, 0.0))
        self._emit(
            "join",
            joined.room,
            session.session_id,
            session.connected_at_ms,
            {
                "session_id": session.session_id,
                "wp_user_id": session.user_id,
                "transport": "websocket",
                "contributors": list(joined.contributors),
                "contributor_count": len(joined.contributors),
                "session_count": joined.session_count,
                "post_type": post_type,
                "reconnect": True if reconnect else None,
            },
            ts=session.joined_at_ms,
        )

    def blocked(self, blocked: Blocked) -> None:
        self._metrics.blocked.labels(blocked.limit_kind).inc()
        if not blocked.first:
            return
        self._emit(
            "blocked",
            blocked.room,
            blocked.session_id,
            None,
            {
                "session_id": blocked.session_id,
                "wp_user_id": blocked.user_id,
                "contributors": list(blocked.contributors),
                "contributor_count": len(blocked.contributors),
                "session_count": blocked.session_count,
                "limit": blocked.limit,
                "limit_kind": blocked.limit_kind,
            },
        )

    def left(self, left: Left) -> None:
        session = left.session
        duration_ms = max(left.ended_at_ms - session.joined_at_ms, 0)
        self._metrics.session_duration.observe(duration_ms / 1000)
        self._emit(
            "leave",
            left.room,
            session.session_id,
            session.connected_at_ms,
            {
                "session_id": session.session_id,
                "wp_user_id": session.user_id,
                "duration_ms": duration_ms,
                "clean": left.clean,
                "updates": session.updates,
            },
            ts=left.ended_at_ms,
        )

    def connection_error(
        self,
        room: RoomKey,
        *,
        connection: int,
        connected_at_ms: int,
        session: Session | None,
        error_code: str,
        close_code: int,
    ) -> None:
        self._metrics.connection_errors.labels(error_code).inc()
        identity = session.session_id if session is not None else f"c{self._instance}-{connection}"
        self._emit(
            "connection_error",
            room,
            identity,
            connected_at_ms,
            {
                "session_id": session.session_id if session is not None else None,
                "wp_user_id": session.user_id if session is not None else None,
                "error_code": error_code,
                "close_code": close_code,
            },
        )

    def _emit(
        self,
        kind: str,
        room: RoomKey,
        identity: int | str,
        connected_at_ms: int | None,
        props: Mapping[str, JSONValue],
        *,
        ts: int | None = None,
    ) -> None:
        name = self._prefix + kind
        event_id = uuid.uuid5(
            EVENT_NAMESPACE,
            f"{room.blog_id}/{room.post_id}/{identity}/{kind}/{connected_at_ms or ''}",
        )
        try:
            event = Event(
                name,
                {"blog_id": room.blog_id, "post_id": room.post_id, **props},
                ts=ts if ts is not None else now_ms(),
                event_id=str(event_id),
                prefix=self._prefix,
            )
        except ValueError:
            logger.exception("could not build a %s event; not recorded", name)
            self._metrics.recorder_failures.inc()
            return
        self.record(event, room)

    def captured(self, event: Event) -> bool:
        """Whether capture control lets this event through (its blog's switch and sample)."""
        blog_id = event.props.get("blog_id")
        if self._capture is None or not isinstance(blog_id, int):
            return True
        settings = self._capture.for_blog(blog_id)
        return settings.enabled and props_in_sample(event.props, settings.sample_rate)

    def record(
        self, event: Event, room: RoomKey | None, *, origin: Origin = "server"
    ) -> Routing:
        """Route an event through the streams and capture control, then to its recorders and
        the live feed. Never raises; the routing says what became of it."""
        routing = self.streams.route(event, origin=origin)
        if not routing.accepted:
            self._metrics.events_not_captured.labels(routing.outcome).inc()
            if routing.outcome == "rejected" and origin == "server":
                logger.warning("server event %s rejected by the streams: %s",
                               event.name, routing.reason)
            return routing
        if not self.captured(event):
            self._metrics.events_not_captured.labels("capture_off").inc()
            return Routing(outcome="sampled_out", stream=routing.stream, reason="capture control")
        self._metrics.events_recorded.labels(event.name).inc()
        fanout = self._fanout(routing.recorders)
        if fanout is not None:
            failures = fanout.failures
            fanout.record(event)
            if fanout.failures != failures:
                self._metrics.recorder_failures.inc(fanout.failures - failures)
        if room is not None:
            self._feed.publish(room, event.to_json())
        return routing

    def _fanout(self, names: tuple[str, ...]) -> FanoutRecorder | None:
        if names not in self._fanouts:
            # Each destination once, whichever names lead to it.
            targets = {id(r): r for name in names for r in self._named.get(name, ())}
            self._fanouts[names] = FanoutRecorder(*targets.values()) if targets else None
        return self._fanouts[names]
