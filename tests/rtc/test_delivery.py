"""DeliveringConnection on real sockets: messages reach the sink whole and in order, frames
queued in one tick arrive in order, and a message in too many pieces is refused."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest
from pycrdt import Doc, Text
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from rtc.delivery import EARLY_LIMIT, MAX_FRAGMENTS, DeliveringConnection, encode
from rtc.protocol import SyncUpdate
from rtc.protocol import encode as encode_message

from .clients import TIMEOUT, RawClient, YClient, serve_rtc


class Harness:
    """A bare websockets server whose connections are DeliveringConnections."""

    def __init__(self) -> None:
        self.received: list[tuple[bytes, bool]] = []
        self.arrived = anyio.Event()
        self.release = anyio.Event()  # the handler attaches its sink only once this is set
        self.connection: DeliveringConnection | None = None
        self.expected = 0

    def sink(self, data: bytes, text: bool) -> None:
        self.received.append((data, text))
        if len(self.received) >= self.expected:
            self.arrived.set()

    async def handler(self, ws: ServerConnection) -> None:
        assert isinstance(ws, DeliveringConnection)
        self.connection = ws
        with anyio.fail_after(TIMEOUT):  # a test that fails before releasing ends this too
            await self.release.wait()
        ws.attach(self.sink)
        await ws.wait_closed()

    async def wait(self, count: int) -> None:
        self.expected = count
        if len(self.received) >= count:
            return
        with anyio.fail_after(TIMEOUT):
            await self.arrived.wait()


@asynccontextmanager
async def harness() -> AsyncIterator[tuple[Harness, str]]:
    h = Harness()
    async with serve(
        h.handler, "127.0.0.1", 0, create_connection=DeliveringConnection, compression=None
    ) as server:
        port = server.sockets[0].getsockname()[1]
        yield h, f"ws://127.0.0.1:{port}"


async def test_messages_sent_before_the_sink_is_attached_arrive_whole_and_in_order() -> None:
    count = EARLY_LIMIT * 3  # past the bound where reading pauses
    async with harness() as (h, url), connect(url, compression=None) as ws:
        for index in range(count):
            await ws.send(index.to_bytes(4, "big") * 25)
        await ws.send("a text frame")
        h.release.set()
        await h.wait(count + 1)
    assert h.received[:count] == [(i.to_bytes(4, "big") * 25, False) for i in range(count)]
    assert h.received[count] == (b"a text frame", True)


async def test_fragments_are_joined_into_one_message() -> None:
    h: Harness
    async with harness() as (h, url), connect(url, compression=None) as ws:
        h.release.set()
        await ws.send([b"first ", b"second ", b"third"])
        await ws.send(b"next")
        await h.wait(2)
    assert h.received == [(b"first second third", False), (b"next", False)]


async def test_a_message_in_too_many_fragments_is_refused_with_1009() -> None:
    async with harness() as (h, url), connect(url, compression=None) as ws:
        h.release.set()
        # The server may close before the last fragments are written.
        with contextlib.suppress(ConnectionClosed):
            await ws.send(b"x" for _ in range(MAX_FRAGMENTS + 10))
        with anyio.fail_after(TIMEOUT):
            await ws.wait_closed()
        assert ws.protocol.close_rcvd is not None
        assert ws.protocol.close_rcvd.code == 1009
    assert h.received == []


async def test_frames_queued_in_one_tick_arrive_in_order() -> None:
    count = 500
    async with harness() as (h, url), connect(url, compression=None) as ws:
        h.release.set()
        await ws.send(b"hello")
        await h.wait(1)
        assert h.connection is not None
        for index in range(count):  # one tick: written together at its end
            h.connection.queue(encode(index.to_bytes(2, "big")))
        assert h.connection.pending_bytes > 0
        with anyio.fail_after(TIMEOUT):
            received = [await ws.recv() for _ in range(count)]
    assert received == [index.to_bytes(2, "big") for index in range(count)]


async def test_frames_queued_to_a_closed_connection_are_dropped() -> None:
    async with harness() as (h, url):
        async with connect(url, compression=None) as ws:
            h.release.set()
            await ws.send(b"hello")
            await h.wait(1)
        connection = h.connection
        assert connection is not None
        with anyio.fail_after(TIMEOUT):
            await connection.wait_closed()
        connection.queue(encode(b"too late"))  # no error, nothing written
        await anyio.lowlevel.checkpoint()  # the end-of-tick flush runs before this returns
        assert connection.pending_bytes == 0


async def test_a_fragmented_update_reaches_the_room(tmp_path: Path) -> None:
    source = Doc()
    text = source.get("content", type=Text)
    text += "sent in pieces"
    message = encode_message(SyncUpdate(source.get_update()))
    async with serve_rtc(tmp_path) as running:
        async with (
            YClient.connect(running.room_url(), client_id=1, user=1) as reader,
            RawClient.connect(running.room_url()) as writer,
        ):
            await writer.join(2, user=2)
            await writer.barrier()
            third = len(message) // 3
            pieces = [message[:third], message[third : 2 * third], message[2 * third :]]
            await writer.ws.send(pieces)
            await reader.wait_text("sent in pieces")


async def test_too_many_fragments_at_a_room_is_one_message_too_big_error(tmp_path: Path) -> None:
    async with serve_rtc(tmp_path) as running:
        async with (
            RawClient.connect(running.room_url()) as bystander,
            RawClient.connect(running.room_url()) as sender,
        ):
            await bystander.join(1, user=1)
            await sender.join(2, user=2)
            await sender.barrier()
            with contextlib.suppress(ConnectionClosed):  # the server may close first
                await sender.ws.send(b"\x00" for _ in range(MAX_FRAGMENTS + 10))
            assert await sender.closed() == (1009, "too many fragments")
            error = await running.wait_event("connection_error", session_id=2)
            assert error.props["error_code"] == "message-too-big"
            await bystander.barrier()  # the room carries on
        assert len(running.events("connection_error")) == 1


@pytest.mark.slow  # 10 MiB through the room: about 3.5 s
async def test_a_peer_that_stops_reading_is_closed_with_1013_and_nobody_waits(
    tmp_path: Path,
) -> None:
    source = Doc()
    text = source.get("content", type=Text)
    chunk = "x" * 256 * 1024
    # The writer's byte budget is raised: it is the reader that must be let go, not it. Its
    # burst is half the outbox limit, so each 256 KiB update overdraws it, and an update
    # that comes before it refills closes the writer (1008): at 1 TB/s it refills within a
    # microsecond, whatever the pace of this loop (at 64 MiB/s it took 2 ms, and a fast
    # machine sent the next update sooner).
    async with serve_rtc(
        tmp_path, outbox_limit=256 * 1024, bytes_per_second=10**12
    ) as running:
        async with (
            RawClient.connect(running.room_url(), max_queue=1) as stalled,
            YClient.connect(running.room_url(), client_id=2, user=2) as reader,
            RawClient.connect(running.room_url()) as writer,
        ):
            # A small receive buffer, fixed (no autotuning up to tcp_rmem's tens of MB).
            sock = stalled.ws.transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
            await stalled.join(1, user=1)
            await stalled.barrier()
            await writer.join(3, user=3)
            await writer.barrier()
            # The stalled client reads no more: its socket buffers fill (4 MiB at most for
            # the server's send buffer here, 16 KiB for its receive buffer), then the server's
            # backlog for it passes the limit, while the reader keeps up with every update.
            for _ in range(40):  # 10 MiB
                before = source.get_state()
                text.insert(len(text), chunk)
                await writer.send(SyncUpdate(source.get_update(before)))
                length = len(text)
                await reader.wait(lambda expected=length: len(reader.text) == expected)
            error = await running.wait_event("connection_error", session_id=1)
            assert (error.props["error_code"], error.props["close_code"]) == ("outbox-full", 1013)
            await writer.barrier()  # the room carries on, for the others
            assert str(reader.text) == str(text)
            assert running.events("connection_error") == [error]
            stalled.ws.transport.abort()  # it reads nothing, not even the end of its connection
