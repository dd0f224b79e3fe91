"""A room as one replica of a post among the cluster's nodes: what the other nodes holding
the room share with it, and what they ask of it.

No I/O here and nothing awaits. `rtc.room.Room` is a `Replica`; on one node these methods
are never called. What this node's clients change leaves as the room's `Share` actions;
what comes in here reaches this node's clients and never goes back out (each node shares
only what its own clients changed, so nothing loops between nodes).
"""

from __future__ import annotations

from typing import Any

from pycrdt import Doc

from rtc.actions import Action, Broadcast, ConnectionId, Note, Session
from rtc.awareness import encode_awareness
from rtc.content import Content
from rtc.errors import ProtocolError
from rtc.presence import Presence, awareness_message
from rtc.protocol import SyncUpdate, encode
from rtc.yupdate import check_state_vector

__all__ = ["REMOTE_INVALID", "Replica"]

# What a malformed update or awareness payload from another node amounts to: counted, never
# raised (it is no client's fault, and the entry after it may be fine).
REMOTE_INVALID = Note("remote-invalid")


class Replica:
    """The cluster side of a room (mixed into `rtc.room.Room`, which owns this state)."""

    doc: Doc[Any]
    content: Content
    _presence: Presence
    _sessions: dict[ConnectionId, Session]

    def remote_update(self, update: bytes) -> list[Action]:
        """A document update another node shared: applied (its node checked the size limit
        and persisted it) and relayed to every session here if it changed anything."""
        try:
            change = self.content.apply(update, limited=False)
        except ProtocolError:
            return [REMOTE_INVALID]
        return self._to_sessions(encode(SyncUpdate(change))) if change is not None else []

    def remote_awareness(self, payload: bytes) -> list[Action]:
        """An awareness payload another node shared: the entries new by clock are applied
        and relayed to every session here; entries of sessions held here are ignored
        (another node cannot speak for them)."""
        try:
            changed = self._presence.remote(payload)
        except ProtocolError:
            return [REMOTE_INVALID]
        return self._to_sessions(awareness_message(changed)) if changed else []

    def remote_gone(self, session_id: int) -> list[Action]:
        """Another node's session is gone (its node was reaped): its presence is removed and
        the removal relayed to every session here. A session held here is not touched."""
        removal = self._presence.gone(session_id)
        return self._to_sessions(awareness_message((removal,))) if removal is not None else []

    def diff(self, state_vector: bytes) -> bytes:
        """What a peer at `state_vector` lacks, as one update (y-protocols sync step 2).

        Raises:
            ProtocolError: the state vector is malformed.
        """
        check_state_vector(state_vector)  # before yrs sizes anything by its counts
        try:
            return self.doc.get_update(state_vector)
        except ValueError as error:
            raise ProtocolError("invalid state vector") from error

    def state_vector(self) -> bytes:
        """The document's state vector (y-protocols sync step 1)."""
        return self.doc.get_state()

    def local_presence(self) -> bytes:
        """The current states of the sessions held here, as an awareness payload (of no
        entry when there is none): what this node tells a node that syncs the room."""
        return encode_awareness(self._presence.local())

    def _to_sessions(self, data: bytes) -> list[Action]:
        """A broadcast to every session here, if there is any."""
        return [Broadcast(data, tuple(self._sessions))] if self._sessions else []
