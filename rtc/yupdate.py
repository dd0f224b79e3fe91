"""A structural check of Yjs updates (v1 encoding) and state vectors before they reach yrs.

No I/O here. yrs (through pycrdt) sizes its buffers by the counts an update declares before
it reads what they count: a 20-byte update whose `any` object declares 2**27 entries costs
~0.16 s of CPU and ~220 MB (pycrdt 0.14.13). This walk reads every count, string and
content the way Yjs' `readClientsStructRefs` and `readDeleteSet` do and refuses any count
that the remaining bytes cannot hold, so memory stays proportional to the frame.

It checks shape only; whether the structs make sense together is yrs' job.

It runs on every update before yrs sees it, so it is written for speed: one pass over the
bytes with the position in a local, a varuint of one byte (most of them) read inline, and a
read past the end caught once as `IndexError` rather than tested before every byte.
"""

from __future__ import annotations

from rtc.errors import ProtocolError
from rtc.protocol import MAX_VAR_UINT

__all__ = ["check_state_vector", "check_update"]

# lib0 `any` type tags.
_UNDEFINED, _NULL, _VARINT, _FLOAT32, _FLOAT64, _BIGINT = 127, 126, 125, 124, 123, 122
_FALSE, _TRUE, _STRING, _OBJECT, _ARRAY, _BUFFER = 121, 120, 119, 118, 117, 116
_FIXED = {_UNDEFINED: 0, _NULL: 0, _FALSE: 0, _TRUE: 0, _FLOAT32: 4, _FLOAT64: 8, _BIGINT: 8}

# Item content refs (info & 0b11111); 0 is GC and 10 is Skip, both a bare length.
_GC, _DELETED, _JSON, _BINARY, _STRING_CONTENT, _EMBED = 0, 1, 2, 3, 4, 5
_FORMAT, _TYPE, _ANY, _DOC, _SKIP = 6, 7, 8, 9, 10
_XML_ELEMENT, _XML_HOOK = 3, 5  # type refs that carry a name
_MAX_DEPTH = 64


# Every reader below takes the bytes and a position and returns the position after what it
# read; reading past the end raises IndexError, which the entry points turn into "truncated".


def _uint(data: bytes, pos: int) -> tuple[int, int]:
    """A lib0 varuint at `pos` (7 bits a byte, little-endian, high bit = more): (value, end)."""
    byte = data[pos]
    if byte < 0x80:
        return byte, pos + 1
    value = byte & 0x7F
    shift = 7
    while True:  # bounded by the data: each turn reads one more byte
        pos += 1
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        if value > MAX_VAR_UINT:
            raise ProtocolError("varuint out of range")
        if byte < 0x80:
            return value, pos + 1
        shift += 7


def _skip_uint(data: bytes, pos: int) -> int:
    """Past a varuint whose value is not needed (still range-checked)."""
    if data[pos] < 0x80:
        return pos + 1
    return _uint(data, pos)[1]


def _count(data: bytes, pos: int, min_bytes: int) -> tuple[int, int]:
    """A count of entries each at least `min_bytes` long, checked against what is left."""
    count, pos = _uint(data, pos)
    if count * min_bytes > len(data) - pos:
        raise ProtocolError(f"{count} entries declared in {len(data) - pos} bytes")
    return count, pos


def _skip(data: bytes, pos: int, size: int) -> int:
    if size > len(data) - pos:
        raise ProtocolError(f"declared length {size} exceeds the bytes left")
    return pos + size


def _var_bytes(data: bytes, pos: int) -> int:
    """Past a varuint length and that many bytes."""
    size, pos = _uint(data, pos)
    if size > len(data) - pos:
        raise ProtocolError(f"declared length {size} exceeds the bytes left")
    return pos + size


def _skip_int(data: bytes, pos: int) -> int:
    """Past a lib0 signed varint: continuation bit 0x80 on every byte but the last."""
    for _ in range(10):
        byte = data[pos]
        pos += 1
        if byte < 0x80:
            return pos
    raise ProtocolError("number out of range")


def _any(data: bytes, pos: int, depth: int = 0) -> int:
    if depth > _MAX_DEPTH:
        raise ProtocolError("values nested too deep")
    tag = data[pos]
    pos += 1
    fixed = _FIXED.get(tag)
    if fixed is not None:
        return _skip(data, pos, fixed)
    if tag == _VARINT:
        return _skip_int(data, pos)
    if tag in (_STRING, _BUFFER):
        return _var_bytes(data, pos)
    if tag == _OBJECT:
        count, pos = _count(data, pos, 2)
        for _ in range(count):
            pos = _any(data, _var_bytes(data, pos), depth + 1)
        return pos
    if tag == _ARRAY:
        count, pos = _count(data, pos, 1)
        for _ in range(count):
            pos = _any(data, pos, depth + 1)
        return pos
    raise ProtocolError(f"unknown value type {tag}")


def _content(data: bytes, pos: int, ref: int) -> int:
    if ref in (_STRING_CONTENT, _BINARY, _EMBED):
        return _var_bytes(data, pos)
    if ref == _DELETED:
        return _skip_uint(data, pos)
    if ref == _JSON:
        count, pos = _count(data, pos, 1)
        for _ in range(count):
            pos = _var_bytes(data, pos)
        return pos
    if ref == _FORMAT:
        return _var_bytes(data, _var_bytes(data, pos))
    if ref == _TYPE:
        type_ref, pos = _uint(data, pos)
        return _var_bytes(data, pos) if type_ref in (_XML_ELEMENT, _XML_HOOK) else pos
    if ref == _ANY:
        count, pos = _count(data, pos, 1)
        for _ in range(count):
            pos = _any(data, pos)
        return pos
    if ref == _DOC:
        return _any(data, _var_bytes(data, pos))
    raise ProtocolError(f"unknown content type {ref}")


def check_update(update: bytes) -> None:
    """Walk a v1 update: client blocks of structs, then the delete set.

    Raises:
        ProtocolError: a count larger than its bytes, a truncation, an unknown type.
    """
    try:
        _walk_update(update)
    except IndexError:
        raise ProtocolError("invalid document update: truncated") from None
    except ProtocolError as error:
        raise ProtocolError(f"invalid document update: {error}") from None


def _walk_update(data: bytes) -> None:
    uint, skip_uint, var_bytes = _uint, _skip_uint, _var_bytes
    clients, pos = _count(data, 0, 3)
    for _ in range(clients):
        structs, pos = _count(data, pos, 2)
        pos = skip_uint(data, skip_uint(data, pos))  # client, clock
        for _ in range(structs):
            info = data[pos]
            pos += 1
            ref = info & 0b11111
            if ref in (_GC, _SKIP):
                pos = skip_uint(data, pos)
                continue
            if info & 0x80:  # origin
                pos = skip_uint(data, skip_uint(data, pos))
            if info & 0x40:  # right origin
                pos = skip_uint(data, skip_uint(data, pos))
            if not info & 0xC0:  # no origin: the parent is spelled out
                named, pos = uint(data, pos)  # 1: a root type's name; else the parent's id
                pos = var_bytes(data, pos) if named == 1 else skip_uint(data, skip_uint(data, pos))
                if info & 0x20:
                    pos = var_bytes(data, pos)  # parentSub (a map key)
            pos = var_bytes(data, pos) if ref == _STRING_CONTENT else _content(data, pos, ref)
    clients, pos = _count(data, pos, 2)
    for _ in range(clients):
        ranges, pos = _count(data, skip_uint(data, pos), 2)  # after the client
        for _ in range(ranges):
            pos = skip_uint(data, skip_uint(data, pos))  # clock, length


def check_state_vector(state_vector: bytes) -> None:
    """Walk a state vector: a count of (client, clock) pairs.

    Raises:
        ProtocolError: a count larger than its bytes, or a truncation.
    """
    data = state_vector
    try:
        count, pos = _count(data, 0, 2)
        for _ in range(count):
            pos = _skip_uint(data, _skip_uint(data, pos))
    except IndexError:
        raise ProtocolError("invalid state vector: truncated") from None
    except ProtocolError as error:
        raise ProtocolError(f"invalid state vector: {error}") from None
