"""Awareness updates (y-protocols/awareness): decoding, encoding and the room's state table.

No I/O here. An awareness update is a varuint count of entries, each a varuint clientID, a
varuint clock and a varstring JSON state (`null` means "this client is gone"). A state is
applied only when it is new by clock, which is what keeps relaying linear: y-websocket
clients re-send every update they apply, and those echoes are old by clock.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from rtc.actions import Identity
from rtc.errors import AwarenessTooBigError, ProtocolError
from rtc.ids import id_from_json
from rtc.protocol import Reader, write_var_bytes, write_var_uint

__all__ = [
    "AwarenessEntry",
    "AwarenessStates",
    "decode_awareness",
    "encode_awareness",
    "first_client",
    "own_entry",
    "user_of",
    "with_user",
]

# An awareness update larger than this many entries is not something a Yjs client sends.
MAX_ENTRIES = 10_000


@dataclass(frozen=True, slots=True)
class AwarenessEntry:
    """One client's awareness state at one clock.

    Attributes:
        client_id: the Yjs clientID (the session id of the connection that controls it).
        clock: the state's clock; higher wins.
        state_json: the state exactly as sent (`"null"` for a removal), re-sent unchanged.
    """

    client_id: int
    clock: int
    state_json: str

    @property
    def removed(self) -> bool:
        return self.state_json == "null"

    def state(self) -> Any:
        """The parsed state (`None` for a removal).

        Parsed on demand: most entries a server sees are echoes it drops unread.

        Raises:
            ProtocolError: the state is not JSON.
        """
        try:
            return json.loads(self.state_json)
        except ValueError as error:
            raise ProtocolError("awareness state is not JSON") from error


def decode_awareness(
    payload: bytes, *, max_entries: int = MAX_ENTRIES
) -> tuple[AwarenessEntry, ...]:
    """Decode an awareness update (states stay unparsed until `AwarenessEntry.state()`).

    Args:
        payload: the awareness update.
        max_entries: more entries than this are refused before any is parsed (each costs
            CPU; a y-websocket client lists at most the clients of its room).

    Raises:
        AwarenessTooBigError: more than `max_entries` entries.
        ProtocolError: malformed varints, lengths or UTF-8.
    """
    reader = Reader(payload)
    count = reader.read_var_uint()
    if count > max_entries:
        raise AwarenessTooBigError(f"awareness update with {count} entries")
    entries = []
    for _ in range(count):
        client_id = reader.read_var_uint()
        clock = reader.read_var_uint()
        entries.append(AwarenessEntry(client_id, clock, reader.read_var_string()))
    reader.expect_end()
    return tuple(entries)


def first_client(payload: bytes) -> tuple[int, int | None]:
    """The entry count of an awareness update and its first clientID, reading nothing more.

    Raises:
        ProtocolError: the header is malformed.
    """
    reader = Reader(payload)
    count = reader.read_var_uint()
    return count, reader.read_var_uint() if count else None


def encode_awareness(entries: Iterable[AwarenessEntry]) -> bytes:
    """Encode entries as an awareness update (the payload of an awareness message)."""
    entries = list(entries)
    parts = [write_var_uint(len(entries))]
    for entry in entries:
        parts.append(write_var_uint(entry.client_id))
        parts.append(write_var_uint(entry.clock))
        parts.append(write_var_bytes(entry.state_json.encode("utf-8")))
    return b"".join(parts)


def user_of(state: Any) -> tuple[int | None, str | None]:
    """The WordPress user id and name a state announces (Gutenberg's `collaboratorInfo`).

    Only an id (`rtc.ids`: a positive integer below 2**63, or its digits) counts; anything
    else is treated as unknown.
    """
    if not isinstance(state, dict):
        return None, None
    info = state.get("collaboratorInfo")
    if not isinstance(info, dict):
        return None, None
    name = info.get("name")
    return id_from_json(info.get("id"), digits=True), name if isinstance(name, str) else None


def with_user(state: Any, user_id: int, name: str | None) -> Any:
    """A state whose `collaboratorInfo` names this user (the token's), whatever it claimed.

    Peers render `collaboratorInfo` (Gutenberg's convention); with tokens on, the id (and the
    name, when the token has one) must be the token's, never what the client wrote. A state
    without `collaboratorInfo` is left as it is: it names nobody.
    """
    if not isinstance(state, dict) or "collaboratorInfo" not in state:
        return state
    info = state["collaboratorInfo"]
    info = dict(info) if isinstance(info, dict) else {}
    info["id"] = user_id
    if name is not None:
        info["name"] = name
    return {**state, "collaboratorInfo": info}


def own_entry(
    entry: AwarenessEntry, identity: Identity | None, *, max_state: int
) -> tuple[AwarenessEntry, Any]:
    """A connection's own entry, validated, and the state it sent, parsed; with a token, the
    entry shows the token's identity (rewritten rather than refused, so unmodified clients
    keep working).

    Raises:
        AwarenessTooBigError: the state is longer than `max_state` characters.
        ProtocolError: the state is not JSON.
    """
    if len(entry.state_json) > max_state:
        raise AwarenessTooBigError(f"awareness state of {len(entry.state_json)} characters")
    state = entry.state()  # validates before anything is applied or relayed
    if state is None:
        if not entry.removed:
            entry = AwarenessEntry(entry.client_id, entry.clock, "null")  # " null " is null
        return entry, state
    if identity is not None and identity.user_id is not None:
        shown = with_user(state, identity.user_id, identity.name)
        if shown != state:
            text = json.dumps(shown, separators=(",", ":"), ensure_ascii=False)
            return AwarenessEntry(entry.client_id, entry.clock, text), state
    return entry, state


class AwarenessStates:
    """The awareness states a room knows, by clientID, with their clocks."""

    def __init__(self) -> None:
        self._entries: dict[int, AwarenessEntry] = {}

    def apply(self, entry: AwarenessEntry) -> bool:
        """Apply an entry if it is new by clock (y-protocols' rule). Returns whether it was."""
        current = self._entries.get(entry.client_id)
        if current is not None and not (
            current.clock < entry.clock
            or (current.clock == entry.clock and entry.removed and not current.removed)
        ):
            return False
        if current is None and entry.removed:
            return False
        self._entries[entry.client_id] = entry
        return True

    def remove(self, client_id: int) -> AwarenessEntry | None:
        """Remove a client's state; returns the removal entry to broadcast, if it had one."""
        current = self._entries.pop(client_id, None)
        if current is None or current.removed:
            return None
        return AwarenessEntry(client_id, current.clock + 1, "null")

    def present(self) -> Iterator[AwarenessEntry]:
        """Every live (non-removed) state, for a late joiner or a query-awareness."""
        return (entry for entry in self._entries.values() if not entry.removed)

    def __len__(self) -> int:
        return len(self._entries)
