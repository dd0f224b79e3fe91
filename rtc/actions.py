"""What a room decides: the actions the driver carries out, in order, and what they carry.

No I/O here. A `Session` is an admitted connection; a `Contributor` is a roster entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rtc.history import RecentEnd
from rtc.ids import RoomKey
from rtc.limits import ContributorKey, contributor_key

__all__ = [
    "ECHO",
    "UNCHANGED",
    "Action",
    "Blocked",
    "Broadcast",
    "CheckLiveness",
    "Close",
    "ConnectionId",
    "Contributor",
    "Identity",
    "Joined",
    "Left",
    "Note",
    "Persist",
    "Reserve",
    "Send",
    "Session",
    "Share",
]

ConnectionId = int


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a connection says it is (from its token, or from its awareness state)."""

    user_id: int | None
    name: str | None = None


@dataclass(slots=True)
class Session:
    """An admitted connection, named by the awareness clientID it announced."""

    connection: ConnectionId
    session_id: int
    user_id: int | None
    name: str | None
    connected_at_ms: int
    joined_at_ms: int
    updates: int = 0
    identity: Identity | None = None  # from its token: the identity its presence must show

    @property
    def contributor(self) -> ContributorKey:
        """What counts as one contributor: the user, or the session itself when anonymous."""
        return contributor_key(self.session_id, self.user_id)


@dataclass(frozen=True, slots=True)
class Contributor:
    """One roster entry: a user (or an anonymous session) with its sessions."""

    user_id: int | None
    name: str | None
    sessions: tuple[Session, ...]


# --- actions the driver carries out, in order -------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    connection: ConnectionId
    data: bytes


@dataclass(frozen=True, slots=True)
class Broadcast:
    data: bytes
    to: tuple[ConnectionId, ...]


@dataclass(frozen=True, slots=True)
class Close:
    connection: ConnectionId
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class CheckLiveness:
    """Ping `holder`, which holds the session `claimant` announced, with a short deadline,
    then tell the room with `Room.liveness_checked`. A live holder keeps its session (the
    claimant is refused); only a dead one is replaced.
    """

    holder: ConnectionId
    claimant: ConnectionId


@dataclass(frozen=True, slots=True)
class Reserve:
    """Cluster mode: ask the cluster's roster to admit this session, then tell the room with
    `Room.reserved(connection, decision, now_ms)` (None for a decision: Redis did not answer).
    """

    connection: ConnectionId
    session_id: int
    user_id: int | None
    name: str | None
    connected_at_ms: int
    now_ms: int


@dataclass(frozen=True, slots=True)
class Share:
    """Cluster mode: publish to the room's other nodes what this node's clients changed.

    Attributes:
        kind: "update" (a document update, as persisted) or "awareness" (an awareness
            payload of this node's sessions' entries; a removal is a "null" state).
        data: the bytes.
    """

    kind: Literal["update", "awareness"]
    data: bytes


@dataclass(frozen=True, slots=True)
class Persist:
    """A document update that was applied and must reach the store."""

    update: bytes


@dataclass(frozen=True, slots=True)
class Joined:
    room: RoomKey
    session: Session
    contributors: tuple[int, ...]
    session_count: int
    previous_end: RecentEnd | None


@dataclass(frozen=True, slots=True)
class Blocked:
    room: RoomKey
    connection: ConnectionId
    session_id: int
    user_id: int | None
    contributors: tuple[int, ...]
    session_count: int
    limit: int
    limit_kind: str
    first: bool


@dataclass(frozen=True, slots=True)
class Left:
    """A session ended.

    Attributes:
        awareness_clock: the clock of the presence removal the room broadcast, if any (what
            a reconnect of this session must outbid).
    """

    room: RoomKey
    session: Session
    ended_at_ms: int
    clean: bool
    awareness_clock: int | None = None


@dataclass(frozen=True, slots=True)
class Note:
    """Something worth a counter: an ignored awareness entry, a replaced session..."""

    what: str


Action = (
    Send
    | Broadcast
    | Close
    | CheckLiveness
    | Reserve
    | Persist
    | Share
    | Joined
    | Blocked
    | Left
    | Note
)

# What a message that only re-sent other clients' presence amounts to.
ECHO = Note("awareness-echo")
# What a document update already contained in the document amounts to (neither stored nor
# relayed).
UNCHANGED = Note("update-unchanged")
