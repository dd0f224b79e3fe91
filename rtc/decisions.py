"""How a newcomer's admission is decided: `Admission`, `Refusal` or `Conflict`.

No I/O here. A room decides on one node (`rtc.admission`); in cluster mode the cluster's
roster decides (`rtc.cluster.registry`, from its Lua scripts' replies) and a room in shared
mode finishes the admission from that `Decision`.
"""

from __future__ import annotations

from dataclasses import dataclass

from rtc.history import RecentEnd

__all__ = ["Admission", "Conflict", "Decision", "Refusal"]


@dataclass(frozen=True, slots=True)
class Admission:
    """The session may join.

    Attributes:
        contributors: sorted distinct user ids in the room, cluster-wide, newcomer included.
        session_count: sessions in the room, cluster-wide, newcomer included.
        previous_end: how this session's previous connection ended, if remembered.
        replaced: (node, connection) of the registration this admission took over (the same
            session of the same user, reconnected through another node), if any.
    """

    contributors: tuple[int, ...]
    session_count: int
    previous_end: RecentEnd | None = None
    replaced: tuple[str, int] | None = None


@dataclass(frozen=True, slots=True)
class Refusal:
    """A limit is reached: the session is blocked (4429)."""

    limit: int
    limit_kind: str
    contributors: tuple[int, ...]
    session_count: int
    first: bool


@dataclass(frozen=True, slots=True)
class Conflict:
    """The session id is registered to another user (4409)."""


Decision = Admission | Refusal | Conflict
