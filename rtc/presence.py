"""A room's presence: which connection holds each session id here, and every awareness
state the room knows, its own sessions' and (in a cluster) other nodes' sessions'.

No I/O here, and no actions: `rtc.room` decides whom a change reaches. A connection
controls only the clientID it announced; another node speaks only for its own sessions, so
a remote entry for a session held here is ignored.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from rtc.actions import ConnectionId, Session
from rtc.awareness import (
    AwarenessEntry,
    AwarenessStates,
    decode_awareness,
    encode_awareness,
    first_client,
    own_entry,
    user_of,
)
from rtc.limits import RoomLimits
from rtc.protocol import AwarenessMessage, encode

__all__ = ["Presence", "Relay", "awareness_message", "is_echo"]


@dataclass(frozen=True, slots=True)
class Relay:
    """What a session's awareness message amounts to.

    Attributes:
        payload: the entries it changed, as an awareness payload (as sent when nothing was
            rewritten); None when it changed nothing.
        echo: it carried only other clients' entries (a y-websocket echo) and changed nothing.
    """

    payload: bytes | None
    echo: bool = False


ECHOED = Relay(None, echo=True)
NOTHING = Relay(None)


class Presence:
    """The presence of one room.

    Args:
        limits: the room's bounds on awareness entries and states.
    """

    def __init__(self, limits: RoomLimits) -> None:
        self._limits = limits
        self._states = AwarenessStates()
        self._holders: dict[int, ConnectionId] = {}

    def holder(self, session_id: int) -> ConnectionId | None:
        """The connection here that holds a session id, if any."""
        return self._holders.get(session_id)

    def present(self) -> tuple[AwarenessEntry, ...]:
        """Every live state, local and remote (what a late joiner receives)."""
        return tuple(self._states.present())

    def local(self) -> tuple[AwarenessEntry, ...]:
        """The live states of the sessions held here (what this node tells other nodes)."""
        return tuple(
            entry for entry in self._states.present() if entry.client_id in self._holders
        )

    def join(self, connection: ConnectionId, announce: AwarenessEntry) -> None:
        """A connection is admitted with the session its announce names."""
        self._holders[announce.client_id] = connection
        self._states.apply(announce)

    def leave(self, session: Session, *, keep: bool = False) -> AwarenessEntry | None:
        """A session's connection ended; returns the removal entry to broadcast, if any.

        Args:
            keep: leave its state in place (the session lives on, on another node, which
                now speaks for it).
        """
        if self._holders.get(session.session_id) != session.connection:
            return None  # it no longer held its id: its state is another connection's
        del self._holders[session.session_id]
        return None if keep else self._states.remove(session.session_id)

    def update(self, session: Session, payload: bytes) -> Relay:
        """A session's awareness update: only its own entry counts, if new by clock.

        Raises:
            AwarenessTooBigError: too many entries, or its own state too long.
            ProtocolError: a malformed payload or state.
        """
        count, first = first_client(payload)
        if is_echo(session, first if count == 1 else None):
            # The common case by far: dropped unread (the rest of it cannot affect anyone).
            return ECHOED
        max_state = self._limits.max_awareness_state
        entries = decode_awareness(payload, max_entries=self._limits.max_awareness_entries)
        changed = []
        foreign = 0
        for entry in entries:
            # A connection controls only the clientID it announced. Other ids are y-websocket
            # echoes (old by clock) or claims on someone else's presence: both are ignored.
            if entry.client_id != session.session_id:
                foreign += 1
                continue
            entry, state = own_entry(entry, session.identity, max_state=max_state)
            if self._states.apply(entry):
                changed.append(entry)
                _, name = user_of(state)
                if name is not None and (session.identity is None or not session.identity.name):
                    session.name = name  # a token's name is the roster's, whatever is shown
        if not changed:
            return ECHOED if foreign else NOTHING
        # Relayed as sent unless something was rewritten.
        return Relay(payload if tuple(changed) == entries else encode_awareness(changed))

    def remote(self, payload: bytes) -> tuple[AwarenessEntry, ...]:
        """Another node's awareness payload; returns the entries it changed, in order.

        Entries of sessions held here are ignored; the others are applied by clock (a null
        state at an equal or higher clock is a removal, as in y-protocols).

        Raises:
            ProtocolError: a malformed payload, or more entries than a room parses.
        """
        entries = decode_awareness(payload, max_entries=self._limits.max_awareness_entries)
        max_state = self._limits.max_awareness_state
        changed = []
        for entry in entries:
            if entry.client_id in self._holders or len(entry.state_json) > max_state:
                continue
            if self._states.apply(entry):
                changed.append(entry)
        return tuple(changed)

    def gone(self, session_id: int) -> AwarenessEntry | None:
        """Another node's session is gone: its removal entry to broadcast, if it had a state."""
        if session_id in self._holders:
            return None  # held here: only this node ends it
        return self._states.remove(session_id)


def is_echo(session: Session, sender: int | None) -> bool:
    """Whether an awareness update of one entry, by `sender` (None: not one entry), is an echo.

    A y-websocket client re-sends every remote state it applies; a connection controls only
    the clientID it announced, so one entry of another id can change nothing.
    """
    return sender is not None and sender != session.session_id


def awareness_message(entries: Iterable[AwarenessEntry]) -> bytes:
    """An awareness message of these entries, as sent to a client."""
    return encode(AwarenessMessage(encode_awareness(entries)))
