"""One post's room: its document, its sessions, its roster and its admission rule.

No I/O here and nothing awaits: every method takes what happened (a connection opened, a
message arrived, a connection ended) and returns the actions the driver must carry out, in
order. Because a step is atomic, a sync step 2 reply and the subscription to later updates
happen together, so no update can overtake step 2 (the handshake race of bare
pycrdt-websocket).

In cluster mode (`shared=True`) the room also speaks for this node to the room's other
nodes: admission is decided by the cluster's roster (`Reserve`, then `reserved`), what this
node's clients change is shared (`Share`), and what other nodes share comes in through
`remote_update`, `remote_awareness` and `remote_gone`. The roster figures of a room stay
this node's own; cluster-wide ones come from the cluster.

Admission (naming a session, claims, limits, the handshake) is `rtc.admission`; the cluster
side is `rtc.replica`: both are mixed into `Room`, which owns the state.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pycrdt import Doc

from rtc.actions import (
    ECHO,
    UNCHANGED,
    Action,
    Broadcast,
    ConnectionId,
    Contributor,
    Identity,
    Left,
    Persist,
    Send,
    Session,
    Share,
)
from rtc.admission import Admissions
from rtc.awareness import decode_awareness, encode_awareness
from rtc.content import Content
from rtc.history import SessionHistory
from rtc.ids import RoomKey
from rtc.limits import HeldBytes, RoomLimits
from rtc.newcomers import Newcomers
from rtc.presence import Presence, awareness_message, is_echo
from rtc.protocol import (
    EMPTY_UPDATE,
    AuthMessage,
    AwarenessMessage,
    Message,
    QueryAwareness,
    SyncStep1,
    SyncStep2,
    SyncUpdate,
    awareness_sender,
    encode,
)
from rtc.replica import Replica

__all__ = ["Room"]


class Room(Admissions, Replica):
    """A post's live state. The driver owns the sockets; the room owns the decisions.

    Args:
        key: which post.
        doc: the document, loaded from the store by the driver.
        limits: admission limits.
        history: shared across rooms, so reconnects and repeated refusals are recognised.
        held: bytes held from newcomers, shared across rooms (by default the room's own).
        stored_bytes: the size of the document's stored updates when it was loaded.
        shared: cluster mode: the room is also open on other nodes.
    """

    def __init__(
        self,
        key: RoomKey,
        doc: Doc[Any],
        *,
        limits: RoomLimits,
        history: SessionHistory,
        held: HeldBytes | None = None,
        stored_bytes: int = 0,
        shared: bool = False,
    ) -> None:
        self.key = key
        self.doc = doc
        self.limits = limits
        self.content = Content(
            doc, stored_bytes=stored_bytes, max_size=limits.max_document_size
        )
        self.shared = shared
        self._history = history
        self._presence = Presence(limits)
        self._newcomers = Newcomers(limits, held or HeldBytes(limits.max_held_total))
        self._sessions: dict[ConnectionId, Session] = {}
        self._replay: dict[ConnectionId, list[Message]] = {}

    # --- queries -----------------------------------------------------------------------

    @property
    def is_empty(self) -> bool:
        return not self._sessions and not self._newcomers

    @property
    def session_count(self) -> int:
        return len(self._sessions)

    @property
    def connection_count(self) -> int:
        return len(self._sessions) + len(self._newcomers)

    def session_of(self, connection: ConnectionId) -> Session | None:
        return self._sessions.get(connection)

    def sessions(self) -> tuple[Session, ...]:
        return tuple(self._sessions.values())

    def contributor_ids(self) -> tuple[int, ...]:
        """Sorted distinct user ids present."""
        return _user_ids(self._sessions.values())

    def roster(self) -> tuple[Contributor, ...]:
        """Contributors present, by user id (anonymous sessions last), sessions by join time."""
        groups: dict[tuple[str, int], list[Session]] = {}
        for session in sorted(self._sessions.values(), key=lambda s: s.joined_at_ms):
            groups.setdefault(session.contributor, []).append(session)
        roster = [
            Contributor(sessions[0].user_id, sessions[-1].name, tuple(sessions))
            for sessions in groups.values()
        ]
        roster.sort(key=lambda c: (c.user_id is None, c.user_id or 0, c.sessions[0].session_id))
        return tuple(roster)

    # --- transitions -------------------------------------------------------------------

    def open(
        self, connection: ConnectionId, now_ms: int, *, identity: Identity | None = None
    ) -> None:
        """A connection arrived. Nothing is sent to it until it names its session."""
        if connection in self._newcomers or connection in self._sessions:
            raise ValueError(f"connection {connection} is already open")
        self._newcomers.open(connection, now_ms, identity)

    def receive(self, connection: ConnectionId, message: Message, now_ms: int) -> list[Action]:
        """A message arrived from a connection.

        Raises:
            ProtocolError: the message is malformed in a way only the room can see (an
                invalid update, invalid awareness); the driver closes that connection.
        """
        session = self._sessions.get(connection)
        if session is not None:
            return self._handle(session, message)
        newcomer = self._newcomers.get(connection)
        if newcomer is None:
            return []
        # While a claim waits for its liveness check or the cluster's decision, later
        # announces are held like the rest.
        limits = self.limits
        if isinstance(message, AwarenessMessage) and not newcomer.waiting:
            entries = decode_awareness(message.payload, max_entries=limits.max_awareness_entries)
            announce = next((entry for entry in entries if not entry.removed), None)
            if announce is not None:
                return self._admit(connection, newcomer, announce, now_ms)
        self._newcomers.hold(newcomer, message)
        return []

    def is_echo(self, connection: ConnectionId, data: bytes) -> bool:
        """Whether an admitted connection's raw message is an awareness update of one state
        that is not its own: a y-websocket client re-sending what it applied. Such a message
        can change nothing (a connection controls only its own clientID), so the driver drops
        it without decoding it; `receive` would come to the same answer, at a higher cost.
        """
        return self.sent_by_other(connection, awareness_sender(data))

    def sent_by_other(self, connection: ConnectionId, sender: int | None) -> bool:
        """`is_echo` from the header already read: `sender` is the clientID of an awareness
        message of one entry (`awareness_header`), None for anything else."""
        session = self._sessions.get(connection)
        return session is not None and is_echo(session, sender)

    def take_held(self, connection: ConnectionId) -> list[Message]:
        """What an admitted connection sent before it named its session, to replay in order."""
        return self._replay.pop(connection, [])

    def close(
        self, connection: ConnectionId, now_ms: int, *, clean: bool, keep_presence: bool = False
    ) -> list[Action]:
        """A connection ended (for any reason). Its presence is removed and broadcast at once.

        Args:
            keep_presence: cluster mode: the session was taken over on another node, which
                now speaks for its presence: nothing is removed, broadcast or shared.
        """
        self._replay.pop(connection, None)
        if self._newcomers.pop(connection) is not None:
            return []
        session = self._sessions.pop(connection, None)
        if session is None:
            return []
        actions: list[Action] = []
        removal = self._presence.leave(session, keep=keep_presence)
        if removal is not None:
            actions.extend(self._to_sessions(awareness_message((removal,))))
            if self.shared:
                actions.append(Share("awareness", encode_awareness((removal,))))
        clock = removal.clock if removal is not None else None
        self._history.note_end(
            (self.key.blog_id, self.key.post_id, session.session_id),
            now_ms,
            abnormal=not clean,
            awareness_clock=clock,
        )
        actions.append(Left(self.key, session, now_ms, clean, clock))
        return actions

    # --- internals ---------------------------------------------------------------------

    def _handle(self, session: Session, message: Message) -> list[Action]:
        match message:
            case SyncStep1(state_vector=state_vector):
                return [Send(session.connection, encode(SyncStep2(self.diff(state_vector))))]
            case SyncStep2(update=update) | SyncUpdate(update=update):
                if update == EMPTY_UPDATE:
                    return []
                change = self.content.apply(update)
                session.updates += 1
                if change is None:
                    # Already contained (a re-sent update, a sync step 2 of what we have):
                    # storing or relaying it again would only fill the disk and the outboxes.
                    return [UNCHANGED]
                others = tuple(c for c in self._sessions if c != session.connection)
                actions: list[Action] = [Persist(change)]
                if self.shared:
                    actions.append(Share("update", change))
                if others:
                    actions.append(Broadcast(encode(SyncUpdate(change)), others))
                return actions
            case AwarenessMessage(payload=payload):
                relay = self._presence.update(session, payload)
                if relay.payload is None:
                    return [ECHO] if relay.echo else []
                # Sent back to the sender too, as the reference server does: for a lone
                # client this traffic is what keeps y-websocket's 30 s "no message received"
                # watchdog quiet.
                sent = encode(AwarenessMessage(relay.payload))
                actions = [Broadcast(sent, tuple(self._sessions))]
                if self.shared:
                    actions.append(Share("awareness", relay.payload))
                return actions
            case QueryAwareness():
                present = self._presence.present()
                return [Send(session.connection, awareness_message(present))]
            case AuthMessage():
                return []
        raise TypeError(f"unexpected message {message!r}")


def _user_ids(sessions: Iterable[Session]) -> tuple[int, ...]:
    return tuple(sorted({s.user_id for s in sessions if s.user_id is not None}))
