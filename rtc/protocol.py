"""The y-websocket wire format: message dataclasses, `decode()` and `encode()`.

No I/O here, and no trust in the peer: every malformed input raises `ProtocolError`, never
`IndexError` (pycrdt's own `Decoder` may raise those on hostile bytes, so it is not used here).

Layout (y-websocket, lib0 encoding): a varuint message type, then
- 0 sync: a varuint sync type (0 step 1, 1 step 2, 2 update) and a varuint-length payload;
- 1 awareness: a varuint-length awareness update (see `rtc.awareness`);
- 2 auth: a varuint auth type and a varstring reason (tolerated, ignored);
- 3 query-awareness: nothing more.
"""

from __future__ import annotations

from dataclasses import dataclass

from rtc.errors import ProtocolError

__all__ = [
    "EMPTY_UPDATE",
    "AuthMessage",
    "AwarenessMessage",
    "Message",
    "QueryAwareness",
    "Reader",
    "SyncStep1",
    "SyncStep2",
    "SyncUpdate",
    "awareness_header",
    "awareness_sender",
    "decode",
    "encode",
    "write_var_bytes",
    "write_var_uint",
]

MESSAGE_SYNC = 0
MESSAGE_AWARENESS = 1
MESSAGE_AUTH = 2
MESSAGE_QUERY_AWARENESS = 3

SYNC_STEP1 = 0
SYNC_STEP2 = 1
SYNC_UPDATE = 2

# lib0 refuses varuints beyond JavaScript's safe integer range; so do we.
MAX_VAR_UINT = 2**53 - 1

# A Yjs update that carries nothing: no structs, an empty delete set.
EMPTY_UPDATE = b"\x00\x00"


@dataclass(frozen=True, slots=True)
class SyncStep1:
    """y-protocols sync step 1: "here is my state vector, send me what I miss"."""

    state_vector: bytes


@dataclass(frozen=True, slots=True)
class SyncStep2:
    """y-protocols sync step 2: the update answering a step 1."""

    update: bytes


@dataclass(frozen=True, slots=True)
class SyncUpdate:
    """An incremental document update."""

    update: bytes


@dataclass(frozen=True, slots=True)
class AwarenessMessage:
    """An awareness update, still encoded (decoded by `rtc.awareness.decode_awareness`)."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class AuthMessage:
    """y-websocket's auth message; tolerated and ignored (tokens travel in the URL)."""

    auth_type: int
    reason: str


@dataclass(frozen=True, slots=True)
class QueryAwareness:
    """A request for every awareness state the server knows."""


Message = SyncStep1 | SyncStep2 | SyncUpdate | AwarenessMessage | AuthMessage | QueryAwareness


class Reader:
    """A cursor over untrusted bytes that raises `ProtocolError` on anything malformed."""

    __slots__ = ("_data", "_position")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._position = 0

    def read_var_uint(self) -> int:
        """Read a lib0 varuint (7 bits a byte, little-endian, high bit = more)."""
        data = self._data
        value = 0
        shift = 0
        while True:
            if self._position >= len(data):
                raise ProtocolError("truncated varuint")
            byte = data[self._position]
            self._position += 1
            value |= (byte & 0x7F) << shift
            if value > MAX_VAR_UINT:
                raise ProtocolError("varuint out of range")
            if byte < 0x80:
                return value
            shift += 7

    def read_var_bytes(self) -> bytes:
        """Read a varuint length, then that many bytes."""
        length = self.read_var_uint()
        end = self._position + length
        if end > len(self._data):
            raise ProtocolError(f"declared length {length} exceeds the message")
        chunk = self._data[self._position : end]
        self._position = end
        return chunk

    def read_var_string(self) -> str:
        """Read varuint-length UTF-8 text."""
        try:
            return self.read_var_bytes().decode("utf-8")
        except UnicodeDecodeError as error:
            raise ProtocolError("invalid UTF-8 in string") from error

    def remaining(self) -> int:
        """How many bytes are left to read."""
        return len(self._data) - self._position

    def expect_end(self) -> None:
        """Refuse trailing bytes: a well-formed message is consumed exactly."""
        if self._position != len(self._data):
            raise ProtocolError(f"{len(self._data) - self._position} trailing bytes")


def decode(data: bytes) -> Message:
    """Decode one y-websocket binary frame.

    Raises:
        ProtocolError: the frame is not exactly one well-formed message.
    """
    reader = Reader(data)
    message_type = reader.read_var_uint()
    message: Message
    if message_type == MESSAGE_SYNC:
        sync_type = reader.read_var_uint()
        payload = reader.read_var_bytes()
        if sync_type == SYNC_STEP1:
            message = SyncStep1(payload)
        elif sync_type == SYNC_STEP2:
            message = SyncStep2(payload)
        elif sync_type == SYNC_UPDATE:
            message = SyncUpdate(payload)
        else:
            raise ProtocolError(f"unknown sync message type {sync_type}")
    elif message_type == MESSAGE_AWARENESS:
        message = AwarenessMessage(reader.read_var_bytes())
    elif message_type == MESSAGE_AUTH:
        message = AuthMessage(reader.read_var_uint(), reader.read_var_string())
    elif message_type == MESSAGE_QUERY_AWARENESS:
        message = QueryAwareness()
    else:
        raise ProtocolError(f"unknown message type {message_type}")
    reader.expect_end()
    return message


def _var_uint_at(data: bytes, position: int) -> tuple[int, int]:
    """A varuint at `position`: (value, position after it). Raises IndexError past the end,
    ProtocolError beyond `MAX_VAR_UINT`: `Reader`'s rule, without its method calls."""
    byte = data[position]
    if byte < 0x80:
        return byte, position + 1
    value, shift = byte & 0x7F, 7
    while True:  # bounded by the data: each turn reads one more byte
        position += 1
        byte = data[position]
        value |= (byte & 0x7F) << shift
        if value > MAX_VAR_UINT:
            raise ProtocolError("varuint out of range")
        if byte < 0x80:
            return value, position + 1
        shift += 7


def awareness_header(data: bytes) -> tuple[int, int | None] | None:
    """What an awareness message's header says, the entries unread: (the entry count it
    declares, the clientID of its one entry). None for any other message.

    The count is 1 when the header is malformed (the full decode refuses the message). The
    clientID is None unless the message carries exactly one entry and its declared length
    adds up (the others take the full `decode`). This is how the y-websocket echoes of a
    room, most of its traffic, are priced, recognised and dropped cheaply: one read of the
    header for both.
    """
    if not data or data[0] != MESSAGE_AWARENESS:
        return None
    try:
        length, position = _var_uint_at(data, 1)
        adds_up = length >= 1 and len(data) - position == length
        count, position = _var_uint_at(data, position)
        if count != 1 or not adds_up or len(data) < 4:
            return count, None
        return 1, _var_uint_at(data, position)[0]
    except (IndexError, ProtocolError):
        return 1, None


def awareness_sender(data: bytes) -> int | None:
    """The clientID of an awareness message that carries exactly one entry, from its header.

    None for anything else: other messages, several entries, or a header that does not add
    up (those take the full `decode`). See `awareness_header`.
    """
    header = awareness_header(data)
    return None if header is None else header[1]


def write_var_uint(value: int) -> bytes:
    """Encode a lib0 varuint."""
    if not 0 <= value <= MAX_VAR_UINT:
        raise ValueError(f"varuint out of range: {value}")
    out = bytearray()
    while value > 0x7F:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    out.append(value)
    return bytes(out)


def write_var_bytes(data: bytes) -> bytes:
    """Encode a varuint length followed by the bytes."""
    return write_var_uint(len(data)) + data


def encode(message: Message) -> bytes:
    """Encode one message as a y-websocket binary frame."""
    match message:
        case SyncStep1(state_vector=state_vector):
            return bytes((MESSAGE_SYNC, SYNC_STEP1)) + write_var_bytes(state_vector)
        case SyncStep2(update=update):
            return bytes((MESSAGE_SYNC, SYNC_STEP2)) + write_var_bytes(update)
        case SyncUpdate(update=update):
            return bytes((MESSAGE_SYNC, SYNC_UPDATE)) + write_var_bytes(update)
        case AwarenessMessage(payload=payload):
            return bytes((MESSAGE_AWARENESS,)) + write_var_bytes(payload)
        case AuthMessage(auth_type=auth_type, reason=reason):
            return (
                bytes((MESSAGE_AUTH,))
                + write_var_uint(auth_type)
                + write_var_bytes(reason.encode("utf-8"))
            )
        case QueryAwareness():
            return bytes((MESSAGE_QUERY_AWARENESS,))
    raise TypeError(f"not a y-websocket message: {message!r}")
