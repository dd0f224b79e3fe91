"""The entries of a room's log (the Redis stream ``rtc:{blog:post}:log``): `Entry`, its
field encoding, and the payload of a ``reply``.

No I/O here, and no trust in what the stream holds: `decode_entry` and `decode_reply` raise
`ValueError` on anything malformed (a foreign writer, a newer or older node), never
`KeyError` or `IndexError`.

An entry's fields (bytes keys, as XADD stores them):

- ``n``: the origin node id (every node skips its own entries);
- ``k``: the kind, one of `KINDS`;
- ``d``: the data, bytes whose meaning depends on the kind;
- ``t``: optional target node id: only that node acts on the entry.

Fields other than these are ignored, so that a later version may add one without older
nodes dropping its entries.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rtc.errors import ProtocolError
from rtc.protocol import Reader, write_var_bytes

__all__ = [
    "AWARENESS",
    "GONE",
    "KICK",
    "KINDS",
    "LEFT",
    "REPLACED",
    "REPLY",
    "SYNC",
    "TARGETED",
    "UPDATE",
    "Entry",
    "decode_entry",
    "decode_flat",
    "decode_reply",
    "encode_entry",
    "encode_reply",
    "fields_of",
]

UPDATE = "update"  # a document update a local client made
AWARENESS = "awareness"  # an awareness update: the origin node's local sessions only
GONE = "gone"  # data: a session id (ASCII decimal) whose presence is gone (the reaper)
SYNC = "sync"  # data: the origin's state vector; every holder answers with a reply
REPLY = "reply"  # target: the asker; data: encode_reply(update, awareness, state_vector)
REPLACED = "replaced"  # target: a node; data: its connection id (ASCII) taken over
KICK = "kick"  # data: a user id (ASCII decimal) whose sessions in the room are closed
LEFT = "left"  # data: empty: the origin node no longer holds the room (it unloaded it)

KINDS = frozenset({UPDATE, AWARENESS, GONE, SYNC, REPLY, REPLACED, KICK, LEFT})
# Kinds that mean something only to one node: without a target they are malformed.
TARGETED = frozenset({REPLY, REPLACED})

NODE = b"n"
KIND = b"k"
DATA = b"d"
TARGET = b"t"


@dataclass(frozen=True, slots=True)
class Entry:
    """One entry of a room's log.

    Attributes:
        node: the node that wrote it.
        kind: one of `KINDS`.
        data: the payload (see the kinds above).
        target: the only node that acts on it, or None for every node.
    """

    node: str
    kind: str
    data: bytes
    target: str | None = None


def encode_entry(entry: Entry) -> dict[bytes, bytes]:
    """The XADD fields of an entry (``t`` only when it has a target)."""
    fields = {NODE: entry.node.encode(), KIND: entry.kind.encode(), DATA: entry.data}
    if entry.target is not None:
        fields[TARGET] = entry.target.encode()
    return fields


def _text(fields: Mapping[bytes, bytes], name: bytes) -> str:
    value = fields[name]
    if not isinstance(value, bytes):
        raise ValueError(f"field {name!r} is not bytes")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"field {name!r} is not UTF-8") from error
    if not text:
        raise ValueError(f"field {name!r} is empty")
    return text


def fields_of(flat: Sequence[Any]) -> dict[bytes, bytes]:
    """An entry's fields from the flat ``[field, value, ...]`` list Redis replies with.

    Raises:
        ValueError: an odd number of items, or a field name that is not bytes.
    """
    if len(flat) % 2:
        raise ValueError("an odd number of field items")
    fields = dict(zip(flat[::2], flat[1::2], strict=True))
    if not all(isinstance(name, bytes) for name in fields):
        raise ValueError("a field name is not bytes")
    return fields


_PLAIN = {kind.encode(): kind for kind in KINDS - TARGETED}


def decode_flat(flat: Sequence[Any]) -> Entry:
    """The entry of the flat ``[field, value, ...]`` list Redis replies with: the usual
    ``n, k, d`` without a target is decoded at once, anything else as `decode_entry` does.

    Raises:
        ValueError: as `decode_entry` and `fields_of`.
    """
    if len(flat) == 6 and flat[0] == NODE and flat[2] == KIND and flat[4] == DATA:
        node, kind, data = flat[1], _PLAIN.get(flat[3]), flat[5]
        if kind is not None and isinstance(node, bytes) and node and isinstance(data, bytes):
            try:
                return Entry(node.decode("utf-8"), kind, data)
            except UnicodeDecodeError as error:
                raise ValueError("field b'n' is not UTF-8") from error
    return decode_entry(fields_of(flat))


def decode_entry(fields: Mapping[bytes, bytes]) -> Entry:
    """The entry that XADD fields hold.

    Raises:
        ValueError: a field is missing, empty or not text where text is due, the kind is
            unknown, or a kind that needs a target has none.
    """
    missing = [name for name in (NODE, KIND, DATA) if name not in fields]
    if missing:
        raise ValueError(f"missing fields {missing!r}")
    node = _text(fields, NODE)
    kind = _text(fields, KIND)
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}")
    data = fields[DATA]
    if not isinstance(data, bytes):
        raise ValueError("field b'd' is not bytes")
    target = _text(fields, TARGET) if TARGET in fields else None
    if target is None and kind in TARGETED:
        raise ValueError(f"a {kind!r} entry needs a target")
    return Entry(node, kind, data, target)


def encode_reply(update: bytes, awareness: bytes, state_vector: bytes) -> bytes:
    """The data of a ``reply``: three varuint-length byte strings (lib0 encoding, as in
    y-protocols): what the asker lacks, the replier's local presence (an awareness update,
    possibly empty), and the replier's state vector."""
    return write_var_bytes(update) + write_var_bytes(awareness) + write_var_bytes(state_vector)


def decode_reply(data: bytes) -> tuple[bytes, bytes, bytes]:
    """``(update, awareness, state_vector)`` from a ``reply``'s data.

    Raises:
        ValueError: the data is not exactly three length-prefixed byte strings.
    """
    reader = Reader(data)
    try:
        update = reader.read_var_bytes()
        awareness = reader.read_var_bytes()
        state_vector = reader.read_var_bytes()
        reader.expect_end()
    except ProtocolError as error:
        raise ValueError(f"malformed reply: {error}") from error
    return update, awareness, state_vector
