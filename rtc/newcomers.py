"""What a room holds for connections that have not named their session yet.

No I/O here. A connection is admitted by the awareness update that names its session; what
it sends before (and while its admission is decided) is held, to be replayed in order once
it is admitted. Holding is bounded per connection (`RoomLimits.max_held_messages`,
`max_held_bytes`) and across every room of a server (`HeldBytes`), and given back the
moment the connection is admitted or ends.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rtc.actions import ConnectionId, Identity, Session
from rtc.awareness import AwarenessEntry, own_entry, user_of
from rtc.errors import HeldTooMuchError, HeldTotalError
from rtc.limits import HeldBytes, RoomLimits
from rtc.protocol import AwarenessMessage, Message, SyncStep1, SyncStep2, SyncUpdate

__all__ = ["Candidate", "Claim", "Newcomer", "Newcomers", "candidate"]


@dataclass(frozen=True, slots=True)
class Claim:
    """An announce for a session id another connection holds, waiting for a liveness check."""

    announce: AwarenessEntry
    holder: ConnectionId


@dataclass(frozen=True, slots=True)
class Candidate:
    """A newcomer's announce, validated, and who it says it is: what admission decides on.

    Attributes:
        announce: its own entry (with a token, showing the token's identity).
        user_id: the token's user, else the one its state announces, if any.
        name: the token's name, else the one its state announces, if any.
    """

    announce: AwarenessEntry
    user_id: int | None
    name: str | None


@dataclass(slots=True)
class Newcomer:
    connected_at_ms: int
    identity: Identity | None
    held: list[Message] = field(default_factory=list)
    held_bytes: int = 0
    claim: Claim | None = None
    reserving: Candidate | None = None  # cluster mode: waiting for the cluster's decision

    @property
    def waiting(self) -> bool:
        """Whether it announced and waits for a decision (what it sends meanwhile is held)."""
        return self.claim is not None or self.reserving is not None

    def session(self, connection: ConnectionId, admitted: Candidate, now_ms: int) -> Session:
        """The session this newcomer becomes, admitted as `admitted` at `now_ms`."""
        return Session(
            connection=connection,
            session_id=admitted.announce.client_id,
            user_id=admitted.user_id,
            name=admitted.name,
            connected_at_ms=self.connected_at_ms,
            joined_at_ms=now_ms,
            identity=self.identity,
        )


class Newcomers:
    """The connections of a room not admitted yet, and what is held for them.

    Args:
        limits: the per-connection bounds.
        held: the server-wide tally of held bytes.
    """

    def __init__(self, limits: RoomLimits, held: HeldBytes) -> None:
        self._limits = limits
        self._held = held
        self._newcomers: dict[ConnectionId, Newcomer] = {}

    def __len__(self) -> int:
        return len(self._newcomers)

    def __contains__(self, connection: object) -> bool:
        return connection in self._newcomers

    def open(self, connection: ConnectionId, now_ms: int, identity: Identity | None) -> None:
        self._newcomers[connection] = Newcomer(now_ms, identity)

    def get(self, connection: ConnectionId) -> Newcomer | None:
        return self._newcomers.get(connection)

    def hold(self, newcomer: Newcomer, message: Message) -> None:
        """Hold a message until the newcomer is admitted.

        Raises:
            HeldTooMuchError: past this connection's bounds.
            HeldTotalError: past what the server holds for all newcomers together.
        """
        size = _size(message)
        limits = self._limits
        if (
            len(newcomer.held) >= limits.max_held_messages
            or newcomer.held_bytes + size > limits.max_held_bytes
        ):
            raise HeldTooMuchError(
                "too much sent before the awareness update that names the session"
            )
        if not self._held.hold(size):
            raise HeldTotalError(f"{self._held.total} bytes held from newcomers")
        newcomer.held.append(message)
        newcomer.held_bytes += size

    def pop(self, connection: ConnectionId) -> Newcomer | None:
        """Remove a newcomer (admitted, refused or gone), giving back what it held."""
        newcomer = self._newcomers.pop(connection, None)
        if newcomer is not None:
            self._held.release(newcomer.held_bytes)
            newcomer.held_bytes = 0
        return newcomer


def candidate(
    newcomer: Newcomer, announce: AwarenessEntry, *, max_state: int
) -> tuple[Candidate, bool]:
    """Who a newcomer's announce makes it, and whether the announce named another user
    than its token (rewritten, not refused: unmodified clients keep working).

    Raises:
        AwarenessTooBigError: the state is longer than `max_state` characters.
        ProtocolError: the state is not JSON.
    """
    identity = newcomer.identity
    announce, state = own_entry(announce, identity, max_state=max_state)
    announced_user, announced_name = user_of(state)
    if identity is None:
        return Candidate(announce, announced_user, announced_name), False
    mismatch = announced_user is not None and announced_user != identity.user_id
    return Candidate(announce, identity.user_id, identity.name or announced_name), mismatch


def _size(message: Message) -> int:
    match message:
        case SyncStep1(state_vector=data) | SyncStep2(update=data) | SyncUpdate(update=data):
            return len(data)
        case AwarenessMessage(payload=data):
            return len(data)
    return 1
