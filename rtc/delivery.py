"""Message delivery on a websockets connection, without a queue or a task switch per message.

websockets' asyncio connection puts each message in a queue that a reader task awaits, and
writes each frame it is asked to send at once. For a room server both cost more than the
work itself: in a 50-client room almost every inbound message is an awareness echo dropped
after reading two varints, and one update goes out as 49 frames of the same bytes. So:

- inbound: `attach(sink)` hands every complete message to `sink(data, text)` from the
  protocol callback that parsed it (fragments joined here). Frames that arrive before the
  sink is attached wait, in order, with reading paused once they pass a bound;
- outbound: `queue(frame)` takes a frame encoded once for all its recipients (`encode`) and
  writes everything queued to a peer in one call at the end of the loop tick. Frames queued
  to a connection that is no longer open are dropped.

Control frames, the handshake and closing stay with websockets.
"""

from __future__ import annotations

from collections.abc import Callable

from websockets.asyncio.server import ServerConnection
from websockets.frames import BINARY, CONT, DATA_OPCODES, TEXT, CloseCode, Frame
from websockets.protocol import Event, State

__all__ = ["DeliveringConnection", "Sink", "encode"]

Sink = Callable[[bytes, bool], None]
"""Takes one whole message: its bytes, and whether it came as a text frame."""

MAX_FRAGMENTS = 1024  # a message in more pieces than this is refused (1009)
EARLY_LIMIT = 64  # messages held before a sink is attached, past which reading pauses


def encode(data: bytes, *, text: bool = False) -> bytes:
    """One unmasked server frame carrying `data`, ready for `queue` (the same for every peer)."""
    return Frame(TEXT if text else BINARY, data).serialize(mask=False)


class DeliveringConnection(ServerConnection):
    """A `ServerConnection` that delivers messages to a sink and coalesces outgoing frames."""

    _sink: Sink | None = None
    _early: list[tuple[bytes, bool]] | None = None
    _fragments: list[bytes | bytearray | memoryview] | None = None
    _fragments_text = False
    _outbox: list[bytes] | None = None
    _outbox_size = 0
    _backlog = 0  # what the transport held when this tick's first frame was queued

    # --- inbound -----------------------------------------------------------------------

    def attach(self, sink: Sink) -> None:
        """Deliver every message to `sink` from now on, starting with those that waited."""
        early, self._early = self._early, None
        self._sink = sink
        for data, text in early or ():
            sink(data, text)
        if early is not None and len(early) >= EARLY_LIMIT and self.transport is not None:
            self.transport.resume_reading()

    def process_event(self, event: Event) -> None:
        if not isinstance(event, Frame) or event.opcode not in DATA_OPCODES:
            super().process_event(event)  # the handshake request and control frames
            return
        if event.opcode is CONT:
            if self._fragments is None:
                return  # websockets' parser refuses a stray continuation before this
            self._fragments.append(event.data)
            if len(self._fragments) > MAX_FRAGMENTS:
                self._fragments = None
                self.protocol.fail(CloseCode.MESSAGE_TOO_BIG, "too many fragments")
                self.send_data()
                return
            if not event.fin:
                return
            data: bytes | bytearray | memoryview = b"".join(self._fragments)
            text = self._fragments_text
            self._fragments = None
        elif not event.fin:
            self._fragments, self._fragments_text = [event.data], event.opcode is TEXT
            return
        else:
            data, text = event.data, event.opcode is TEXT
        self._deliver(bytes(data), text)

    def _deliver(self, data: bytes, text: bool) -> None:
        sink = self._sink
        if sink is not None:
            sink(data, text)
            return
        if self._early is None:
            self._early = []
        self._early.append((data, text))
        if len(self._early) == EARLY_LIMIT and self.transport is not None:
            self.transport.pause_reading()

    # --- outbound ----------------------------------------------------------------------

    @property
    def pending_bytes(self) -> int:
        """Bytes queued here or buffered by the transport, not yet taken by the socket."""
        buffered = self.transport.get_write_buffer_size() if self.transport is not None else 0
        return buffered + self._outbox_size

    def queue(self, frame: bytes, limit: int | None = None) -> bool:
        """Send an encoded frame with the others queued to this peer, at the end of the tick.

        With `limit`, a peer already holding more than that many bytes unsent (queued here or
        buffered by the transport) is not given more: False, and nothing queued.
        """
        outbox = self._outbox
        if outbox is None:
            transport = self.transport
            self._backlog = transport.get_write_buffer_size() if transport is not None else 0
            if limit is not None and self._backlog > limit:
                return False
            self._outbox = [frame]
            self._outbox_size = len(frame)
            self.loop.call_soon(self._flush)
            return True
        if limit is not None and self._backlog + self._outbox_size > limit:
            return False
        outbox.append(frame)
        self._outbox_size += len(frame)
        return True

    def _flush(self) -> None:
        frames, self._outbox, self._outbox_size = self._outbox, None, 0
        transport = self.transport
        if not frames or self.protocol.state is not State.OPEN or transport is None:
            return
        if transport.is_closing():
            return
        if len(frames) == 1:
            transport.write(frames[0])
        else:
            transport.writelines(frames)
