"""One post's room: its document, its sessions, its roster and its admission rule.

No I/O here and nothing awaits: every method takes what happened (a connection opened, a
message arrived, a connection ended) and returns the actions the driver must carry out, in
order. Because a step is atomic, a sync step 2 reply and the subscription to later updates
happen together, so no update can overtake step 2 (the handshake race of bare
pycrdt-websocket).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pycrdt import Doc

from rtc.actions import (
    ECHO,
    UNCHANGED,
    Action,
    Blocked,
    Broadcast,
    CheckLiveness,
    Close,
    ConnectionId,
    Contributor,
    Identity,
    Joined,
    Left,
    Note,
    Persist,
    Send,
    Session,
)
from rtc.awareness import (
    AwarenessEntry,
    AwarenessStates,
    decode_awareness,
    encode_awareness,
    first_client,
    own_entry,
    user_of,
)
from rtc.content import Content
from rtc.errors import CloseCode, ProtocolError
from rtc.history import SessionHistory
from rtc.ids import RoomKey
from rtc.limits import HeldBytes, RoomLimits, contributor_key
from rtc.newcomers import Claim, Newcomer, Newcomers
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
from rtc.yupdate import check_state_vector

__all__ = ["Room"]


class Room:
    """A post's live state. The driver owns the sockets; the room owns the decisions.

    Args:
        key: which post.
        doc: the document, loaded from the store by the driver.
        limits: admission limits.
        history: shared across rooms, so reconnects and repeated refusals are recognised.
        held: bytes held from newcomers, shared across rooms (by default the room's own).
        stored_bytes: the size of the document's stored updates when it was loaded.
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
    ) -> None:
        self.key = key
        self.doc = doc
        self.limits = limits
        self.content = Content(
            doc, stored_bytes=stored_bytes, max_size=limits.max_document_size
        )
        self._history = history
        self._awareness = AwarenessStates()
        self._newcomers = Newcomers(limits, held or HeldBytes(limits.max_held_total))
        self._sessions: dict[ConnectionId, Session] = {}
        self._by_session_id: dict[int, ConnectionId] = {}
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
        # While a claim waits for its liveness check, later announces are held like the rest.
        limits = self.limits
        if isinstance(message, AwarenessMessage) and newcomer.claim is None:
            entries = decode_awareness(message.payload, max_entries=limits.max_awareness_entries)
            announce = next((entry for entry in entries if not entry.removed), None)
            if announce is not None:
                return self._admit(connection, newcomer, announce, now_ms)
        self._newcomers.hold(newcomer, message)
        return []

    def liveness_checked(
        self, claimant: ConnectionId, holder: ConnectionId, now_ms: int, *, alive: bool
    ) -> list[Action]:
        """The outcome of a `CheckLiveness`: the claimant is refused, or takes the session over."""
        newcomer = self._newcomers.get(claimant)
        if newcomer is None or newcomer.claim is None or newcomer.claim.holder != holder:
            return []  # the claimant is gone (or checked again)
        announce, newcomer.claim = newcomer.claim.announce, None
        return self._admit(claimant, newcomer, announce, now_ms, holder_alive=alive)

    def is_echo(self, connection: ConnectionId, data: bytes) -> bool:
        """Whether an admitted connection's raw message is an awareness update of one state
        that is not its own: a y-websocket client re-sending what it applied. Such a message
        can change nothing (a connection controls only its own clientID), so the driver drops
        it without decoding it; `receive` would come to the same answer, at a higher cost.
        """
        session = self._sessions.get(connection)
        return session is not None and _is_echo(session, awareness_sender(data))

    def take_held(self, connection: ConnectionId) -> list[Message]:
        """What an admitted connection sent before it named its session, to replay in order."""
        return self._replay.pop(connection, [])

    def close(self, connection: ConnectionId, now_ms: int, *, clean: bool) -> list[Action]:
        """A connection ended (for any reason). Its presence is removed and broadcast at once."""
        self._replay.pop(connection, None)
        if self._newcomers.pop(connection) is not None:
            return []
        session = self._sessions.pop(connection, None)
        if session is None:
            return []
        actions: list[Action] = []
        removal = None
        if self._by_session_id.get(session.session_id) == connection:
            del self._by_session_id[session.session_id]
            removal = self._awareness.remove(session.session_id)
            if removal is not None and self._sessions:
                actions.append(Broadcast(_awareness_message((removal,)), tuple(self._sessions)))
        self._history.note_end(
            (self.key.blog_id, self.key.post_id, session.session_id),
            now_ms,
            abnormal=not clean,
            awareness_clock=removal.clock if removal is not None else None,
        )
        actions.append(Left(self.key, session, now_ms, clean))
        return actions

    # --- internals ---------------------------------------------------------------------

    def _admit(
        self,
        connection: ConnectionId,
        newcomer: Newcomer,
        announce: AwarenessEntry,
        now_ms: int,
        *,
        holder_alive: bool | None = None,
    ) -> list[Action]:
        session_id = announce.client_id
        identity = newcomer.identity
        announce, state = own_entry(announce, identity, max_state=self.limits.max_awareness_state)
        announced_user, announced_name = user_of(state)
        actions: list[Action] = []
        if identity is not None:
            user_id, name = identity.user_id, identity.name or announced_name
            if announced_user is not None and announced_user != user_id:
                actions.append(Note("awareness-user-mismatch"))
        else:
            user_id, name = announced_user, announced_name

        # A session id is read from the roster by anyone, so a claim on a live one takes it
        # over only when its holder fails a liveness check (the same Y.Doc reconnecting
        # before its old socket was noticed dead); another user's claim is refused at once.
        holder = self._by_session_id.get(session_id)
        if holder is not None:
            if self._sessions[holder].user_id != user_id or holder_alive:
                self._newcomers.pop(connection)
                return [
                    *actions,
                    Note("session-conflict"),
                    Close(connection, CloseCode.SESSION_CONFLICT, "session-conflict"),
                ]
            if holder_alive is None:
                newcomer.claim = Claim(announce, holder)
                return [*actions, CheckLiveness(holder, connection)]
            actions.append(Note("session-replaced"))
            actions.append(Close(holder, CloseCode.SESSION_CONFLICT, "session-replaced"))
            actions.extend(self.close(holder, now_ms, clean=False))

        refusal = self._refusal(connection, session_id, user_id, now_ms)
        if refusal is not None:
            self._newcomers.pop(connection)
            return [
                *actions,
                refusal,
                Close(connection, CloseCode.LIMIT_EXCEEDED, "connection-limit-exceeded"),
            ]

        self._newcomers.pop(connection)
        session = Session(
            connection=connection,
            session_id=session_id,
            user_id=user_id,
            name=name,
            connected_at_ms=newcomer.connected_at_ms,
            joined_at_ms=now_ms,
            identity=identity,
        )
        others = tuple(self._sessions)
        self._sessions[connection] = session
        self._by_session_id[session_id] = connection
        self._awareness.apply(announce)

        # y-protocols handshake from the server side: our state vector (so the client sends
        # what we miss), then everyone's presence, then the announce to the others.
        actions.append(Send(connection, encode(SyncStep1(self.doc.get_state()))))
        actions.append(Send(connection, _awareness_message(tuple(self._awareness.present()))))
        if others:
            actions.append(Broadcast(_awareness_message((announce,)), others))
        previous_end = self._history.previous_end(
            (self.key.blog_id, self.key.post_id, session_id), now_ms
        )
        if (
            previous_end is not None
            and previous_end.awareness_clock is not None
            and announce.clock <= previous_end.awareness_clock
        ):
            # A reconnecting Y.Doc re-announces at its old clock, which every peer ignores
            # after our removal. Telling it "you are gone" at the removal clock makes
            # y-protocols bump its clock and re-send, so its presence reappears at once.
            tombstone = AwarenessEntry(session_id, previous_end.awareness_clock, "null")
            actions.append(Send(connection, _awareness_message((tombstone,))))
        actions.append(
            Joined(self.key, session, self.contributor_ids(), len(self._sessions), previous_end)
        )
        # What it sent before naming itself is replayed by the driver through `receive`, one
        # message at a time, so an invalid one fails only that message's step.
        self._replay[connection] = newcomer.held
        return actions

    def _refusal(
        self, connection: ConnectionId, session_id: int, user_id: int | None, now_ms: int
    ) -> Blocked | None:
        reached = self.limits.reached(
            {session.contributor for session in self._sessions.values()},
            len(self._sessions),
            contributor_key(session_id, user_id),
        )
        if reached is None:
            return None
        limit, kind = reached
        first = self._history.note_blocked((self.key.blog_id, self.key.post_id, session_id), now_ms)
        return Blocked(
            room=self.key,
            connection=connection,
            session_id=session_id,
            user_id=user_id,
            contributors=self.contributor_ids(),
            session_count=len(self._sessions),
            limit=limit,
            limit_kind=kind,
            first=first,
        )

    def _handle(self, session: Session, message: Message) -> list[Action]:
        match message:
            case SyncStep1(state_vector=state_vector):
                check_state_vector(state_vector)  # before yrs sizes anything by its counts
                try:
                    update = self.doc.get_update(state_vector)
                except ValueError as error:
                    raise ProtocolError("invalid state vector") from error
                return [Send(session.connection, encode(SyncStep2(update)))]
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
                if others:
                    actions.append(Broadcast(encode(SyncUpdate(change)), others))
                return actions
            case AwarenessMessage(payload=payload):
                return self._handle_awareness(session, payload)
            case QueryAwareness():
                present = tuple(self._awareness.present())
                return [Send(session.connection, _awareness_message(present))]
            case AuthMessage():
                return []
        raise TypeError(f"unexpected message {message!r}")

    def _handle_awareness(self, session: Session, payload: bytes) -> list[Action]:
        count, first = first_client(payload)
        if _is_echo(session, first if count == 1 else None):
            # The common case by far: dropped unread (the rest of it cannot affect anyone).
            return [ECHO]
        max_state = self.limits.max_awareness_state
        entries = decode_awareness(payload, max_entries=self.limits.max_awareness_entries)
        changed = []
        foreign = 0
        for entry in entries:
            # A connection controls only the clientID it announced. Other ids are y-websocket
            # echoes (old by clock) or claims on someone else's presence: both are ignored.
            if entry.client_id != session.session_id:
                foreign += 1
                continue
            entry, state = own_entry(entry, session.identity, max_state=max_state)
            if self._awareness.apply(entry):
                changed.append(entry)
                _, name = user_of(state)
                if name is not None and (session.identity is None or not session.identity.name):
                    session.name = name  # a token's name is the roster's, whatever is shown
        actions: list[Action] = []
        if foreign and not changed:
            actions.append(ECHO)
        if changed:
            data = (
                encode(AwarenessMessage(payload))
                if tuple(changed) == entries  # relayed as sent unless something was rewritten
                else _awareness_message(tuple(changed))
            )
            # Sent back to the sender too, as the reference server does: for a lone client this
            # traffic is what keeps y-websocket's 30 s "no message received" watchdog quiet.
            actions.append(Broadcast(data, tuple(self._sessions)))
        return actions


def _is_echo(session: Session, sender: int | None) -> bool:
    """Whether an awareness update of one entry, by `sender` (None: not one entry), is an echo.

    A y-websocket client re-sends every remote state it applies; a connection controls only
    the clientID it announced, so one entry of another id can change nothing.
    """
    return sender is not None and sender != session.session_id


def _awareness_message(entries: Iterable[AwarenessEntry]) -> bytes:
    return encode(AwarenessMessage(encode_awareness(entries)))


def _user_ids(sessions: Iterable[Session]) -> tuple[int, ...]:
    return tuple(sorted({s.user_id for s in sessions if s.user_id is not None}))

