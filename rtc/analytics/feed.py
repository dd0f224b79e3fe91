"""The in-process stream of recorded events, for live viewers (the demo's event feed).

No I/O here: subscribers hand in a `deliver` callable that must not block (the driver
passes a bounded, non-blocking send). Each room keeps its last few events, so a viewer that
connects sees what just happened. In cluster mode a `FeedRelay` carries this node's events
to the other nodes and is told which rooms have viewers here; what it hears from the other
nodes comes back through `receive`.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from rtc.ids import RoomKey

__all__ = ["EventFeed", "FeedRelay"]

Deliver = Callable[[str], None]


class FeedRelay(Protocol):
    """Where a cluster node's feed meets the other nodes' (`rtc.cluster.controls`)."""

    def relay(self, room: RoomKey, text: str) -> None:
        """An event recorded on this node: tell the other nodes. Never blocks or raises."""

    def watch(self, room: RoomKey, watching: bool) -> None:
        """The room's first viewer arrived (True) or its last one left (False)."""


@dataclass(slots=True)
class _Channel:
    recent: deque[str]
    subscribers: dict[int, Deliver] = field(default_factory=dict)


class EventFeed:
    """Fans recorded events out to live subscribers, per room.

    Args:
        history: events kept per room for a subscriber that arrives later.
        max_rooms: rooms whose history is kept; the least recently active go first.
    """

    def __init__(self, *, history: int = 50, max_rooms: int = 256) -> None:
        if history < 0 or max_rooms < 1:
            raise ValueError("history must be >= 0 and max_rooms >= 1")
        self._history = history
        self._max_rooms = max_rooms
        self._channels: dict[RoomKey, _Channel] = {}
        self._next_id = 0
        self._relay: FeedRelay | None = None

    def attach(self, relay: FeedRelay) -> None:
        """Share events with the other nodes of a cluster through `relay`."""
        if self._relay is not None:
            raise RuntimeError("the feed already has a relay")
        self._relay = relay
        for room, channel in self._channels.items():
            if channel.subscribers:
                relay.watch(room, True)

    def publish(self, room: RoomKey, event: Mapping[str, object]) -> None:
        """Send an event recorded here (its `to_json()` form) to the room's subscribers and
        keep it; in a cluster, relay it to the other nodes too."""
        text = json.dumps(event, separators=(",", ":"))
        self.receive(room, text)
        if self._relay is not None:
            self._relay.relay(room, text)

    def receive(self, room: RoomKey, text: str) -> None:
        """Send an event (JSON text) recorded on another node to the room's subscribers and
        keep it (not relayed again)."""
        channel = self._channel(room)
        channel.recent.append(text)
        for deliver in list(channel.subscribers.values()):
            deliver(text)

    def subscribe(self, room: RoomKey, deliver: Deliver) -> Callable[[], None]:
        """Deliver the room's recent events now (oldest first), then every new one.

        Returns:
            A function that ends the subscription.
        """
        channel = self._channel(room)
        self._next_id += 1
        subscription = self._next_id
        for text in list(channel.recent):
            deliver(text)
        channel.subscribers[subscription] = deliver
        if len(channel.subscribers) == 1 and self._relay is not None:
            self._relay.watch(room, True)

        def unsubscribe() -> None:
            ended = channel.subscribers.pop(subscription, None) is not None
            if ended and not channel.subscribers and self._relay is not None:
                self._relay.watch(room, False)

        return unsubscribe

    def _channel(self, room: RoomKey) -> _Channel:
        channel = self._channels.pop(room, None)
        if channel is None:
            channel = _Channel(deque(maxlen=self._history))
            if len(self._channels) >= self._max_rooms:
                for key, old in list(self._channels.items()):
                    if not old.subscribers:
                        del self._channels[key]
                        break
        self._channels[room] = channel  # most recently used last
        return channel
