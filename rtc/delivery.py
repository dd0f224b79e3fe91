"""Message delivery on a websockets connection, without a queue or a task switch per message.

websockets' asyncio connection puts each message in a queue that a reader task awaits, and
writes each frame it is asked to send at once. For a room server both cost more than the
work itself: in a 50-client room almost every inbound message is an awareness echo dropped
after reading two varints, and one update goes out as 49 frames of the same bytes. So:

- inbound: `attach(sink)` hands every complete message to `sink(data, text)` from the
  protocol callback that parsed it (fragments joined here). Frames that arrive before the
  sink is attached wait, in order, with reading paused once they pass a bound. Ping and pong
  frames, which websockets answers on its own, are reported to `on_control` so that they
  can be charged like any message;
- outbound: `queue(frame)` takes a frame encoded once for all its recipients (`encode`) and
  writes everything queued to a peer in one call at the end of the loop tick. Frames queued
  to a connection that is no longer open are dropped.

Control frames, the handshake and closing stay with websockets.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.frames import BINARY, CONT, DATA_OPCODES, PING, PONG, TEXT, CloseCode, Frame
from websockets.protocol import Event, State

__all__ = ["ControlSink", "DeliveringConnection", "Sink", "encode"]

Sink = Callable[[bytes, bool], None]
"""Takes one whole message: its bytes, and whether it came as a text frame."""

ControlSink = Callable[[int], None]
"""Told of each ping or pong frame received, with the size of its payload."""

MAX_FRAGMENTS = 1024  # a message in more pieces than this is refused (1009)
EARLY_LIMIT = 64  # messages held before a sink is attached, past which reading pauses
EARLY_BYTES = 256 * 1024  # bytes likewise


_CONTROL = (PING, PONG)


def _drop(data: bytes, text: bool) -> None:
    """The sink of a detached connection."""


def encode(data: bytes, *, text: bool = False) -> bytes:
    """One unmasked server frame carrying `data`, ready for `queue` (the same for every peer)."""
    return Frame(TEXT if text else BINARY, data).serialize(mask=False)


class DeliveringConnection(ServerConnection):
    """A `ServerConnection` that delivers messages to a sink and coalesces outgoing frames."""

    _sink: Sink | None = None
    _on_control: ControlSink | None = None
    _early: list[tuple[bytes, bool]] | None = None
    _early_bytes = 0
    _early_paused = False
    _fragments: list[bytes | bytearray | memoryview] | None = None
    _fragments_text = False
    _outbox: list[bytes] | None = None
    _outbox_size = 0
    _backlog = 0  # what the transport held when this tick's first frame was queued

    # --- inbound -----------------------------------------------------------------------

    def attach(self, sink: Sink, *, on_control: ControlSink | None = None) -> None:
        """Deliver every message to `sink` from now on, starting with those that waited, and
        report ping and pong frames to `on_control`."""
        early, self._early, self._early_bytes = self._early, None, 0
        self._sink = sink
        self._on_control = on_control
        for data, text in early or ():
            sink(data, text)
        if self._early_paused and self.transport is not None:
            self._early_paused = False
            self.transport.resume_reading()

    def detach(self) -> None:
        """Deliver nothing more: messages that still arrive are dropped, and the sinks are
        released. A sink is usually a closure over what holds this connection, so keeping it
        would leave a reference cycle that only the cyclic garbage collector frees, with the
        peer, its room and its document behind it."""
        self._sink = _drop
        self._on_control = None
        self._early, self._early_bytes = None, 0

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        # Two reference cycles would keep every closed connection (protocol, buffers, headers,
        # transport, socket) until the cyclic collector's next full pass, minutes and
        # thousands of connections later under churn: websockets leaves its finished parser
        # generator suspended, holding the protocol, and Python 3.11's selector transport
        # holds a bound method of itself. Broken, a closed connection goes by refcounting.
        self.protocol.parser.close()
        transport = self.transport
        if getattr(transport, "_read_ready_cb", None) is not None:
            transport._read_ready_cb = None  # type: ignore[attr-defined]

    def process_event(self, event: Event) -> None:
        if not isinstance(event, Frame) or event.opcode not in DATA_OPCODES:
            on_control = self._on_control
            if on_control is not None and isinstance(event, Frame) and event.opcode in _CONTROL:
                on_control(len(event.data))
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
        self._early_bytes += len(data)
        over = len(self._early) >= EARLY_LIMIT or self._early_bytes >= EARLY_BYTES
        if over and not self._early_paused and self.transport is not None:
            self._early_paused = True
            self.transport.pause_reading()

    async def answers_ping(self) -> bool:
        """Whether the peer answers a ping (a liveness check: the caller sets the deadline).

        The ping may wait behind what is already queued for the peer: one that stopped
        reading never answers, which is the point.
        """
        try:
            await (await self.ping())
        except ConnectionClosed:
            return False
        return True

    async def close_within(self, code: int, reason: str, seconds: float) -> None:
        """Close with a code, or cut the connection if that cannot finish within `seconds`.

        websockets' close() first waits for the peer to drain what is buffered for it, with
        no deadline: a peer that stopped reading (the 1013 case) would never be let go.
        """
        with anyio.move_on_after(seconds):
            await self.close(code, reason)
            return
        if self.transport is not None:
            self.transport.abort()

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
