"""The in-process stream of recorded events, for live viewers (the demo's event feed).

No I/O here: subscribers hand in a `deliver` callable that must not block (the driver
passes a bounded, non-blocking send). Each room keeps its last few events, so a viewer that
connects sees what just happened.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from rtc.ids import RoomKey

__all__ = ["EventFeed"]

Deliver = Callable[[str], None]


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

    def publish(self, room: RoomKey, event: Mapping[str, object]) -> None:
        """Send an event (its `to_json()` form) to the room's subscribers and keep it."""
        channel = self._channel(room)
        text = json.dumps(event, separators=(",", ":"))
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

        def unsubscribe() -> None:
            channel.subscribers.pop(subscription, None)

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
