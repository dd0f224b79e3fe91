"""A room's limits: who counts as a contributor, when a newcomer is turned away, and how
much one connection may make the room hold, parse or store.

No I/O here. An anonymous session counts as a contributor of its own, so a limit cannot be
dodged by leaving out the user id. The errors a room raises when a limit is passed live here
too, each with its close code.
"""

from __future__ import annotations

from collections.abc import Set
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "ContributorKey",
    "HeldBytes",
    "LimitKind",
    "RoomLimits",
    "contributor_key",
]

ContributorKey = tuple[Literal["user", "session"], int]
LimitKind = Literal["contributors", "connections"]


def contributor_key(session_id: int, user_id: int | None) -> ContributorKey:
    """What counts as one contributor: the user, or the session itself when anonymous."""
    return ("user", user_id) if user_id is not None else ("session", session_id)


@dataclass(frozen=True, slots=True, kw_only=True)
class RoomLimits:
    """Admission limits of a room (0 = unlimited) and bounds on what a newcomer may send.

    Attributes:
        max_contributors: distinct users present; a new user beyond it is blocked.
        max_connections: sessions present, whoever they belong to.
        max_held_messages: messages held from a connection before it names its session.
        max_held_bytes: bytes held likewise.
        max_held_total: bytes held from every connection not yet named, across rooms.
        max_document_size: bytes of stored updates the document may grow to, 0 = unlimited.
        max_awareness_entries: entries the room parses from one awareness message (a
            y-websocket client re-sends one entry per client it hears of: a room's worth).
        max_awareness_state: bytes of a connection's own awareness state.
    """

    max_contributors: int = 0
    max_connections: int = 0
    max_held_messages: int = 64
    max_held_bytes: int = 256 * 1024
    max_held_total: int = 64 * 1024 * 1024
    max_document_size: int = 0
    max_awareness_entries: int = 1000
    max_awareness_state: int = 64 * 1024

    def __post_init__(self) -> None:
        for name in ("max_contributors", "max_connections", "max_document_size"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0 = unlimited)")
        for name in (
            "max_held_messages", "max_held_bytes", "max_held_total", "max_awareness_entries",
            "max_awareness_state",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")

    def reached(
        self, present: Set[ContributorKey], sessions: int, newcomer: ContributorKey
    ) -> tuple[int, LimitKind] | None:
        """The limit a newcomer would pass, with its kind, or None when it may join.

        Args:
            present: the contributors in the room (`contributor_key` of each session).
            sessions: the sessions in the room.
            newcomer: the newcomer's contributor key. A present user's further tabs join
                under the contributor limit; only live sessions count; nobody is evicted.
        """
        if self.max_connections and sessions >= self.max_connections:
            return self.max_connections, "connections"
        if (
            self.max_contributors
            and newcomer not in present
            and len(present) >= self.max_contributors
        ):
            return self.max_contributors, "contributors"
        return None


class HeldBytes:
    """Bytes held from connections that have not named their session yet, across rooms.

    Shared by every room of a server (like `SessionHistory`), so that many newcomers in many
    rooms cannot together hold more than `limit`.
    """

    __slots__ = ("limit", "peak", "total")

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        self.limit = limit
        self.total = 0
        self.peak = 0  # the most ever held at once

    @property
    def full(self) -> bool:
        return self.total >= self.limit

    def hold(self, size: int) -> bool:
        """Count `size` more bytes held; False (and nothing counted) past the limit."""
        if self.total + size > self.limit:
            return False
        self.total += size
        self.peak = max(self.peak, self.total)
        return True

    def release(self, size: int) -> None:
        self.total = max(0, self.total - size)
