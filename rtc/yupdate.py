"""A structural check of Yjs updates (v1 encoding) and state vectors before they reach yrs.

No I/O here. yrs (through pycrdt) sizes its buffers by the counts an update declares before
it reads what they count: a 20-byte update whose `any` object declares 2**27 entries costs
~0.16 s of CPU and ~220 MB (pycrdt 0.14.13). This walk reads every count, string and
content the way Yjs' `readClientsStructRefs` and `readDeleteSet` do and refuses any count
that the remaining bytes cannot hold, so memory stays proportional to the frame.

It checks shape only; whether the structs make sense together is yrs' job.
"""

from __future__ import annotations

from rtc.errors import ProtocolError
from rtc.protocol import Reader

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


class _Walk(Reader):
    """The update's bytes under a cursor; varuints come from `Reader` (one decoder)."""

    __slots__ = ()

    @staticmethod
    def fail(detail: str) -> ProtocolError:
        return ProtocolError(detail)

    # The lib0 varuint of y-websocket frames, Yjs updates and state vectors alike.
    uint = Reader.read_var_uint

    def skip_int(self) -> None:
        # lib0 signed varint: continuation bit 0x80 on every byte but the last.
        data, position = self._data, self._position
        for _ in range(10):
            if position >= len(self._data):
                raise self.fail("truncated")
            byte = data[position]
            position += 1
            if byte < 0x80:
                self._position = position
                return
        raise self.fail("number out of range")

    def byte(self) -> int:
        if self._position >= len(self._data):
            raise self.fail("truncated")
        self._position += 1
        return self._data[self._position - 1]

    def skip(self, size: int) -> None:
        if size > self.remaining():
            raise self.fail(f"declared length {size} exceeds the bytes left")
        self._position += size

    def bytes_(self) -> None:
        self.skip(self.uint())

    def count(self, min_bytes: int) -> int:
        """A count of entries each at least `min_bytes` long, checked against what is left."""
        count = self.uint()
        if count * min_bytes > self.remaining():
            raise self.fail(f"{count} entries declared in {self.remaining()} bytes")
        return count

    def any(self, depth: int = 0) -> None:
        if depth > _MAX_DEPTH:
            raise self.fail("values nested too deep")
        tag = self.byte()
        fixed = _FIXED.get(tag)
        if fixed is not None:
            self.skip(fixed)
        elif tag == _VARINT:
            self.skip_int()
        elif tag in (_STRING, _BUFFER):
            self.bytes_()
        elif tag == _OBJECT:
            for _ in range(self.count(2)):
                self.bytes_()
                self.any(depth + 1)
        elif tag == _ARRAY:
            for _ in range(self.count(1)):
                self.any(depth + 1)
        else:
            raise self.fail(f"unknown value type {tag}")


def _content(walk: _Walk, ref: int) -> None:
    if ref == _DELETED:
        walk.uint()
    elif ref == _JSON:
        for _ in range(walk.count(1)):
            walk.bytes_()
    elif ref in (_BINARY, _STRING_CONTENT, _EMBED):
        walk.bytes_()
    elif ref == _FORMAT:
        walk.bytes_()
        walk.bytes_()
    elif ref == _TYPE:
        if walk.uint() in (_XML_ELEMENT, _XML_HOOK):
            walk.bytes_()
    elif ref == _ANY:
        for _ in range(walk.count(1)):
            walk.any()
    elif ref == _DOC:
        walk.bytes_()
        walk.any()
    else:
        raise walk.fail(f"unknown content type {ref}")


def check_update(update: bytes) -> None:
    """Walk a v1 update: client blocks of structs, then the delete set.

    Raises:
        ProtocolError: a count larger than its bytes, a truncation, an unknown type.
    """
    try:
        _walk_update(_Walk(update))
    except ProtocolError as error:
        raise ProtocolError(f"invalid document update: {error}") from None


def _walk_update(walk: _Walk) -> None:
    for _ in range(walk.count(3)):
        structs = walk.count(2)
        walk.uint()  # client
        walk.uint()  # clock
        for _ in range(structs):
            info = walk.byte()
            ref = info & 0b11111
            if ref in (_GC, _SKIP):
                walk.uint()
                continue
            if info & 0x80:  # origin
                walk.uint()
                walk.uint()
            if info & 0x40:  # right origin
                walk.uint()
                walk.uint()
            if not info & 0xC0:  # no origin: the parent is spelled out
                if walk.uint() == 1:
                    walk.bytes_()  # a root type's name
                else:
                    walk.uint()
                    walk.uint()
                if info & 0x20:
                    walk.bytes_()  # parentSub (a map key)
            _content(walk, ref)
    for _ in range(walk.count(2)):
        walk.uint()  # client
        for _ in range(walk.count(2)):
            walk.uint()  # clock
            walk.uint()  # length


def check_state_vector(state_vector: bytes) -> None:
    """Walk a state vector: a count of (client, clock) pairs.

    Raises:
        ProtocolError: a count larger than its bytes, or a truncation.
    """
    walk = _Walk(state_vector)
    try:
        for _ in range(walk.count(2)):
            walk.uint()
            walk.uint()
    except ProtocolError as error:
        raise ProtocolError(f"invalid state vector: {error}") from None
