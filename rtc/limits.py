"""A room's admission limits: who counts as a contributor, and when a newcomer is turned away.

No I/O here. An anonymous session counts as a contributor of its own, so a limit cannot be
dodged by leaving out the user id.
"""

from __future__ import annotations

from collections.abc import Set
from dataclasses import dataclass
from typing import Literal

__all__ = ["ContributorKey", "LimitKind", "RoomLimits", "contributor_key"]

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
        max_document_size: bytes of stored updates the document may grow to, 0 = unlimited.
    """

    max_contributors: int = 0
    max_connections: int = 0
    max_held_messages: int = 64
    max_held_bytes: int = 16 * 1024 * 1024
    max_document_size: int = 0

    def __post_init__(self) -> None:
        for name in ("max_contributors", "max_connections", "max_document_size"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0 = unlimited)")
        if self.max_held_messages < 1 or self.max_held_bytes < 1:
            raise ValueError("max_held_messages and max_held_bytes must be >= 1")

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
