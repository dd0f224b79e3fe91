"""How a room admits a newcomer: the announce that names its session, a claim on a live
session (liveness check, takeover), the limits (this node's, or the cluster's `Reserve` and
`reserved`), and the y-protocols handshake of an admitted session.

No I/O here, like `rtc.room`, whose `Room` this is mixed into: it owns the state below.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pycrdt import Doc

from rtc.actions import (
    Action,
    Blocked,
    Broadcast,
    CheckLiveness,
    Close,
    ConnectionId,
    Joined,
    Note,
    Reserve,
    Send,
    Session,
    Share,
)
from rtc.awareness import AwarenessEntry, encode_awareness
from rtc.decisions import Admission, Conflict, Decision, Refusal
from rtc.errors import CloseCode
from rtc.history import RecentEnd, SessionHistory
from rtc.ids import RoomKey
from rtc.limits import RoomLimits, contributor_key
from rtc.newcomers import Candidate, Claim, Newcomer, Newcomers, candidate
from rtc.presence import Presence, awareness_message
from rtc.protocol import Message, SyncStep1, encode

__all__ = ["Admissions"]


class Admissions:
    """The admission side of a room (mixed into `rtc.room.Room`, which owns this state)."""

    key: RoomKey
    doc: Doc[Any]
    limits: RoomLimits
    shared: bool
    _history: SessionHistory
    _presence: Presence
    _newcomers: Newcomers
    _sessions: dict[ConnectionId, Session]
    _replay: dict[ConnectionId, list[Message]]

    if TYPE_CHECKING:

        def contributor_ids(self) -> tuple[int, ...]: ...

        def close(
            self, connection: ConnectionId, now_ms: int, *, clean: bool,
            keep_presence: bool = False,
        ) -> list[Action]: ...

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


def _tombstone_clock(*ends: RecentEnd | None) -> int | None:
    """The highest removal clock a reconnecting session's announce must outbid, if any."""
    clocks = [end.awareness_clock for end in ends if end is not None]
    return max((clock for clock in clocks if clock is not None), default=None)


def _conflict_close(connection: ConnectionId) -> Close:
    return Close(connection, CloseCode.SESSION_CONFLICT, "session-conflict")
