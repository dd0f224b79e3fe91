"""The names of the cluster's Redis keys. No I/O here.

Every key of one room carries the hash tag ``{blog:post}``, so that a room's keys share one
Redis Cluster hash slot and one Lua script may touch them all.
"""

from __future__ import annotations

from dataclasses import dataclass

from rtc.ids import RoomKey

__all__ = ["Keys", "room_member", "session_member"]


def room_member(key: RoomKey) -> str:
    """A room as a set member: ``"blog:post"``."""
    return f"{key.blog_id}:{key.post_id}"


def session_member(key: RoomKey, session_id: int) -> str:
    """A session as a set member: ``"blog:post:session"``."""
    return f"{key.blog_id}:{key.post_id}:{session_id}"


@dataclass(frozen=True, slots=True)
class Keys:
    """Key names under one prefix (several clusters may share a Redis under prefixes)."""

    prefix: str = "rtc"

    @property
    def settings(self) -> str:
        return f"{self.prefix}:settings"

    @property
    def nodes(self) -> str:
        return f"{self.prefix}:nodes"

    @property
    def rooms(self) -> str:
        return f"{self.prefix}:rooms"

    @property
    def capture(self) -> str:
        return f"{self.prefix}:capture"

    def node_info(self, node: str) -> str:
        return f"{self.prefix}:node:{node}:info"

    def node_sessions(self, node: str) -> str:
        return f"{self.prefix}:node:{node}:sessions"

    def node_replaced(self, node: str) -> str:
        return f"{self.prefix}:node:{node}:replaced"

    def node_reaped(self, node: str) -> str:
        """Set by the reaper that claimed `node` (expires): tells a node that comes back that
        it was reaped, rather than that Redis restarted empty."""
        return f"{self.prefix}:node:{node}:reaped"

    def _room(self, key: RoomKey, what: str) -> str:
        return f"{self.prefix}:{{{key.blog_id}:{key.post_id}}}:{what}"

    def sessions(self, key: RoomKey) -> str:
        return self._room(key, "sessions")

    def contributors(self, key: RoomKey) -> str:
        return self._room(key, "contributors")

    def ends(self, key: RoomKey) -> str:
        return self._room(key, "ends")

    def ends_at(self, key: RoomKey) -> str:
        return self._room(key, "ends_at")

    def blocked(self, key: RoomKey) -> str:
        return self._room(key, "blocked")

    def log(self, key: RoomKey) -> str:
        return self._room(key, "log")
