"""What a room does with what another node said of it. No I/O here.

`answer(room, entry)` turns one entry of the room's stream into the actions for this node's
clients (`Send`, `Broadcast`, `Note`) and the `Share`s to publish back (a sync reply, or
the updates a replier lacks). Entries about connections (`replaced`, `kick`) are the
driver's: they name peers, which a room does not own.
"""

from __future__ import annotations

from dataclasses import dataclass

from rtc.actions import Action, Note, Share
from rtc.cluster.entries import Entry, decode_reply, encode_reply
from rtc.errors import ProtocolError
from rtc.protocol import EMPTY_UPDATE
from rtc.room import Room

__all__ = ["CONNECTION_KINDS", "Reply", "answer"]

# Kinds the driver handles itself (they name this node's connections or users).
CONNECTION_KINDS = frozenset({"replaced", "kick"})


@dataclass(frozen=True, slots=True)
class Reply:
    """Like a `Share`, for one node only (the one that asked)."""

    kind: str
    data: bytes
    target: str


def answer(room: Room, entry: Entry) -> list[Action | Reply]:
    """The actions and shares one entry of `room`'s stream calls for."""
    try:
        match entry.kind:
            case "update":
                return list(room.remote_update(entry.data))
            case "awareness":
                return list(room.remote_awareness(entry.data))
            case "gone":
                return list(room.remote_gone(int(entry.data)))
            case "sync":
                reply = encode_reply(
                    room.diff(entry.data), room.local_presence(), room.state_vector()
                )
                return [Reply("reply", reply, entry.node)]
            case "reply":
                update, presence, vector = decode_reply(entry.data)
                actions: list[Action | Reply] = [
                    *room.remote_update(update),
                    *room.remote_awareness(presence),
                ]
                missing = room.diff(vector)
                if missing != EMPTY_UPDATE:
                    actions.append(Share("update", missing))  # what the replier lacks
                return actions
    except (ProtocolError, ValueError):
        return [Note("remote-invalid")]
    return [Note("remote-unknown")]
