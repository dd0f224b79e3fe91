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
    Reserve,
    Send,
    Session,
    Share,
)
from rtc.awareness import AwarenessEntry, decode_awareness, encode_awareness
from rtc.cluster.outcomes import Admission, Conflict, Decision, Refusal
from rtc.content import Content
from rtc.errors import CloseCode
from rtc.history import RecentEnd, SessionHistory
from rtc.ids import RoomKey
from rtc.limits import HeldBytes, RoomLimits, contributor_key
from rtc.newcomers import Candidate, Claim, Newcomer, Newcomers, candidate
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


class Room(Replica):
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

    def liveness_checked(
        self, claimant: ConnectionId, holder: ConnectionId, now_ms: int, *, alive: bool
    ) -> list[Action]:
        """The outcome of a `CheckLiveness`: the claimant is refused, or takes the session over."""
        newcomer = self._newcomers.get(claimant)
        if newcomer is None or newcomer.claim is None or newcomer.claim.holder != holder:
            return []  # the claimant is gone (or checked again)
        announce, newcomer.claim = newcomer.claim.announce, None
        return self._admit(claimant, newcomer, announce, now_ms, holder_alive=alive)

    def reserved(
        self, connection: ConnectionId, decision: Decision | None, now_ms: int
    ) -> list[Action]:
        """The outcome of a `Reserve`: the cluster's decision, None when Redis did not answer.

        Returns no action at all exactly when the newcomer is gone (it closed while the
        cluster decided): an `Admission` then registered a session nobody holds, which the
        driver must release itself. Any decision for a newcomer still here returns actions.
        """
        newcomer = self._newcomers.get(connection)
        if newcomer is None or newcomer.reserving is None:
            return []
        admitted, newcomer.reserving = newcomer.reserving, None
        session_id = admitted.announce.client_id
        if not isinstance(decision, Admission):
            self._newcomers.pop(connection)
        match decision:
            case Admission(contributors=contributors, session_count=count, previous_end=end):
                actions: list[Action] = []
                holder = self._presence.holder(session_id)
                if holder is not None:
                    # Another connection here took the same session while the cluster
                    # decided; the cluster gave it to this one (the later claim).
                    actions.extend(self._replace(holder, now_ms))
                local_end = self._previous_end(session_id, now_ms)
                session, joining = self._join(
                    connection, newcomer, admitted, now_ms, _tombstone_clock(end, local_end)
                )
                return [*actions, *joining, Joined(self.key, session, contributors, count, end)]
            case Refusal():
                return self._blocked(connection, admitted, decision)
            case Conflict():
                return [Note("session-conflict"), _conflict_close(connection)]
        return [Close(connection, CloseCode.SERVER_BUSY, "cluster-unavailable")]

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

    def _admit(
        self,
        connection: ConnectionId,
        newcomer: Newcomer,
        announce: AwarenessEntry,
        now_ms: int,
        *,
        holder_alive: bool | None = None,
    ) -> list[Action]:
        admitted, mismatch = candidate(
            newcomer, announce, max_state=self.limits.max_awareness_state
        )
        session_id, user_id = announce.client_id, admitted.user_id
        actions: list[Action] = [Note("awareness-user-mismatch")] if mismatch else []

        # A session id is read from the roster by anyone, so a claim on a live one takes it
        # over only when its holder fails a liveness check (the same Y.Doc reconnecting
        # before its old socket was noticed dead); another user's claim is refused at once.
        holder = self._presence.holder(session_id)
        if holder is not None:
            if self._sessions[holder].user_id != user_id or holder_alive:
                self._newcomers.pop(connection)
                return [*actions, Note("session-conflict"), _conflict_close(connection)]
            if holder_alive is None:
                newcomer.claim = Claim(admitted.announce, holder)
                return [*actions, CheckLiveness(holder, connection)]
            actions.extend(self._replace(holder, now_ms))

        if self.shared:
            # The limits are the cluster's: its roster decides, and `reserved` finishes.
            newcomer.reserving = admitted
            return [
                *actions,
                Reserve(
                    connection, session_id, user_id, admitted.name,
                    newcomer.connected_at_ms, now_ms,
                ),
            ]
        refusal = self._refusal(session_id, user_id, now_ms)
        if refusal is not None:
            self._newcomers.pop(connection)
            return [*actions, *self._blocked(connection, admitted, refusal)]
        previous_end = self._previous_end(session_id, now_ms)
        session, joining = self._join(
            connection, newcomer, admitted, now_ms, _tombstone_clock(previous_end)
        )
        return [
            *actions,
            *joining,
            Joined(self.key, session, self.contributor_ids(), len(self._sessions), previous_end),
        ]

    def _join(
        self,
        connection: ConnectionId,
        newcomer: Newcomer,
        admitted: Candidate,
        now_ms: int,
        tombstone_clock: int | None,
    ) -> tuple[Session, list[Action]]:
        """Admit a newcomer: its session, and the handshake actions (all but `Joined`)."""
        announce = admitted.announce
        self._newcomers.pop(connection)
        session = newcomer.session(connection, admitted, now_ms)
        others = tuple(self._sessions)
        self._sessions[connection] = session
        self._presence.join(connection, announce)

        # y-protocols handshake from the server side: our state vector (so the client sends
        # what we miss), then everyone's presence, then the announce to the others.
        actions: list[Action] = [
            Send(connection, encode(SyncStep1(self.doc.get_state()))),
            Send(connection, awareness_message(self._presence.present())),
        ]
        if others:
            actions.append(Broadcast(awareness_message((announce,)), others))
        if self.shared:
            actions.append(Share("awareness", encode_awareness((announce,))))
        if tombstone_clock is not None and announce.clock <= tombstone_clock:
            # A reconnecting Y.Doc re-announces at its old clock, which every peer ignores
            # after our removal. Telling it "you are gone" at the removal clock makes
            # y-protocols bump its clock and re-send, so its presence reappears at once.
            tombstone = AwarenessEntry(announce.client_id, tombstone_clock, "null")
            actions.append(Send(connection, awareness_message((tombstone,))))
        # What it sent before naming itself is replayed by the driver through `receive`, one
        # message at a time, so an invalid one fails only that message's step.
        self._replay[connection] = newcomer.held
        return session, actions

    def _replace(self, holder: ConnectionId, now_ms: int) -> list[Action]:
        """A newcomer takes over the session a dead (or superseded) connection here holds."""
        return [
            Note("session-replaced"),
            Close(holder, CloseCode.SESSION_CONFLICT, "session-replaced"),
            *self.close(holder, now_ms, clean=False),
        ]

    def _previous_end(self, session_id: int, now_ms: int) -> RecentEnd | None:
        return self._history.previous_end((self.key.blog_id, self.key.post_id, session_id), now_ms)

    def _refusal(self, session_id: int, user_id: int | None, now_ms: int) -> Refusal | None:
        """This node's decision on one node (the cluster's roster decides in cluster mode)."""
        reached = self.limits.reached(
            {session.contributor for session in self._sessions.values()},
            len(self._sessions),
            contributor_key(session_id, user_id),
        )
        if reached is None:
            return None
        first = self._history.note_blocked((self.key.blog_id, self.key.post_id, session_id), now_ms)
        return Refusal(*reached, self.contributor_ids(), len(self._sessions), first)

    def _blocked(
        self, connection: ConnectionId, refused: Candidate, refusal: Refusal
    ) -> list[Action]:
        blocked = Blocked(
            room=self.key,
            connection=connection,
            session_id=refused.announce.client_id,
            user_id=refused.user_id,
            contributors=refusal.contributors,
            session_count=refusal.session_count,
            limit=refusal.limit,
            limit_kind=refusal.limit_kind,
            first=refusal.first,
        )
        return [blocked, Close(connection, CloseCode.LIMIT_EXCEEDED, "connection-limit-exceeded")]

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


def _tombstone_clock(*ends: RecentEnd | None) -> int | None:
    """The highest removal clock a reconnecting session's announce must outbid, if any."""
    clocks = [end.awareness_clock for end in ends if end is not None]
    return max((clock for clock in clocks if clock is not None), default=None)


def _conflict_close(connection: ConnectionId) -> Close:
    return Close(connection, CloseCode.SESSION_CONFLICT, "session-conflict")


def _user_ids(sessions: Iterable[Session]) -> tuple[int, ...]:
    return tuple(sorted({s.user_id for s in sessions if s.user_id is not None}))
