"""What the cluster's shared roster answers besides admission decisions (`rtc.decisions`):
registrations, reaped nodes, heartbeats.

No I/O here. `rtc.cluster.registry` builds these from its Lua scripts' replies.
"""

from __future__ import annotations

from dataclasses import dataclass

from rtc.ids import RoomKey

__all__ = [
    "Heartbeat",
    "Reaped",
    "Registration",
]


@dataclass(frozen=True, slots=True)
class Registration:
    """A session as the cluster knows it: which node serves it, on which connection."""

    node: str
    conn: int
    session_id: int
    user_id: int | None
    name: str | None
    connected_at_ms: int
    joined_at_ms: int


@dataclass(frozen=True, slots=True)
class Reaped:
    """A session of a node that stopped heartbeating, removed by the reaper.

    Attributes:
        removed: False for a session that had already been taken over on another node (its
            presence lives on there; only its lost connection is recorded).
    """

    key: RoomKey
    registration: Registration
    removed: bool


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """What a node learns when it heartbeats.

    Attributes:
        now_ms: Redis's clock (``TIME``) at the heartbeat.
        reaped: another node reaped this one (it stopped heartbeating for longer than the
            node timeout: paused or partitioned): its registrations are gone, so it closes
            the connections it held, which reconnect and are admitted again. Reported once.
        alive: nodes alive, this one included.
        missing: this node was not in the cluster's node list (reaped, or Redis came back
            empty): it re-registers its sessions (`Registry.register_all`) unless reaped.
    """

    now_ms: int
    reaped: bool
    alive: int
    missing: bool = False
