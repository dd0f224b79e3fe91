"""Test clients that speak y-websocket bytes: a raw one, and a pycrdt document one.

`serve_rtc()` runs a real server on 127.0.0.1 with an ephemeral port and a MemoryRecorder.
Enter it in the test body: it owns a task group, which must be entered and left by one task.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from pycrdt import Doc, Text
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from rtc import RtcServer, ServerConfig
from rtc.awareness import AwarenessEntry, decode_awareness, encode_awareness
from rtc.protocol import (
    AwarenessMessage,
    Message,
    SyncStep1,
    SyncStep2,
    SyncUpdate,
    decode,
    encode,
)
from tracks import Event, MemoryRecorder, Recorder, SqliteRecorder

TIMEOUT = 10.0 * float(os.environ.get("RTC_TEST_TIMEOUT_FACTOR", "1"))


@dataclass
class Running:
    server: RtcServer
    recorder: MemoryRecorder

    @property
    def url(self) -> str:
        return self.server.ws_url

    def room_url(self, blog_id: int = 7, post_id: int = 42) -> str:
        return f"{self.server.ws_url}/{blog_id}/{post_id}"

    def events(self, kind: str) -> list[Event]:
        return [e for e in self.recorder.events if e.name == "jetpack_rtc_" + kind]

    async def wait_event(self, kind: str, **props: Any) -> Event:
        def matches(event: Event) -> bool:
            return event.name == "jetpack_rtc_" + kind and all(
                event.props.get(key) == value for key, value in props.items()
            )

        with anyio.fail_after(TIMEOUT):
            return await self.recorder.wait_for(matches)


@asynccontextmanager
async def serve_rtc(
    data_dir: Path, *, sqlite: bool = False, **options: Any
) -> AsyncIterator[Running]:
    """A server recording to a MemoryRecorder (and, with `sqlite`, to its default store too)."""
    options.setdefault("port", 0)
    options.setdefault("room_grace", 0.05)
    options.setdefault("store_flush_interval", 0.01)
    config = ServerConfig(data_dir=data_dir, **options)
    async with AsyncExitStack() as stack:
        recorder = await stack.enter_async_context(MemoryRecorder())
        recorders: list[Recorder] = [recorder]
        if sqlite:
            store = SqliteRecorder(data_dir / "events.sqlite", flush_interval=0.01)
            recorders.append(await stack.enter_async_context(store))
        server = await stack.enter_async_context(RtcServer(config, recorders=recorders))
        yield Running(server, recorder)


def presence(client_id: int, user: int | None, *, clock: int = 0, name: str = "Ada") -> bytes:
    """An awareness message announcing a client with Gutenberg's collaboratorInfo."""
    state: dict[str, Any] = {"cursor": None}
    if user is not None:
        state["collaboratorInfo"] = {"id": user, "name": name, "enteredAt": 1700000000000}
    entry = AwarenessEntry(client_id, clock, json.dumps(state))
    return encode(AwarenessMessage(encode_awareness([entry])))


class RawClient:
    """A connection that sends and receives protocol messages exactly as told.

    Every message read, by any method, is kept in `received`, in order: a test proves that
    something did not arrive by looking there after a `barrier()`.
    """

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.received: list[Message] = []

    @classmethod
    @asynccontextmanager
    async def connect(cls, url: str, **kwargs: Any) -> AsyncIterator[RawClient]:
        with anyio.fail_after(TIMEOUT):
            ws = await connect(url, compression=None, **kwargs)
        try:
            yield cls(ws)
        finally:
            with anyio.move_on_after(TIMEOUT):
                await ws.close()

    async def send(self, data: Message | bytes | str) -> None:
        await self.ws.send(data if isinstance(data, bytes | str) else encode(data))

    async def recv(self) -> Message:
        with anyio.fail_after(TIMEOUT):
            data = await self.ws.recv()
        return self._keep(data)

    def _keep(self, data: bytes | str) -> Message:
        assert isinstance(data, bytes), f"the server sent a text frame: {data!r}"
        message = decode(data)
        self.received.append(message)
        return message

    async def recv_until(self, predicate: Callable[[Message], bool]) -> Message:
        with anyio.fail_after(TIMEOUT):
            while True:  # bounded by the timeout
                message = await self.recv()
                if predicate(message):
                    return message

    async def barrier(self) -> Message:
        """A round trip: a sync step 1 answered by step 2 means all before it was processed."""
        await self.send(SyncStep1(b"\x00"))
        return await self.recv_until(lambda m: isinstance(m, SyncStep2))

    async def join(self, client_id: int, user: int | None = None) -> None:
        """Handshake like y-websocket: step 1, then the awareness update naming the session."""
        await self.send(SyncStep1(b"\x00"))
        await self.ws.send(presence(client_id, user))

    async def enter(self, client_id: int, user: int | None = None) -> None:
        """`join`, then wait for the answer to its sync step 1: admitted, and every later
        `barrier()` answers for itself."""
        await self.join(client_id, user)
        await self.recv_until(lambda m: isinstance(m, SyncStep2))

    async def closed(self) -> tuple[int | None, str | None]:
        """Read (into `received`) until the server closes; returns its close code and reason."""
        with anyio.fail_after(TIMEOUT):
            try:
                while True:  # bounded by the timeout
                    self._keep(await self.ws.recv())
            except ConnectionClosed:
                pass
        close = self.ws.protocol.close_rcvd
        return (close.code, close.reason) if close else (None, None)


class YClient:
    """A pycrdt document kept in sync with a room, with its awareness view."""

    def __init__(self, ws: ClientConnection, client_id: int, user: int | None) -> None:
        self.ws = ws
        self.doc = Doc(client_id=client_id)
        self.text = self.doc.get("content", type=Text)
        self.client_id = client_id
        self.user = user
        self.states: dict[int, Any] = {}
        self.synced = anyio.Event()
        self.answered = anyio.Event()  # this client has answered the server's sync step 1
        self._changed = anyio.Event()
        self._subscription = self.doc.observe(self._on_update)

    def _on_update(self, event: Any) -> None:
        if getattr(event, "update", None) and not self._applying:
            self._outgoing.append(event.update)

    _applying = False
    _outgoing: list[bytes]

    @classmethod
    @asynccontextmanager
    async def connect(
        cls, url: str, client_id: int, user: int | None = None, *, max_size: int | None = 2**20
    ) -> AsyncIterator[YClient]:
        with anyio.fail_after(TIMEOUT):
            ws = await connect(url, compression=None, max_size=max_size)
        client = cls(ws, client_id, user)
        client._outgoing = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(client._read)
            await ws.send(encode(SyncStep1(client.doc.get_state())))
            await ws.send(presence(client_id, user))
            try:
                yield client
            finally:
                with anyio.move_on_after(TIMEOUT):
                    await ws.close()
                tg.cancel_scope.cancel()

    async def _read(self) -> None:
        try:
            async for data in self.ws:
                assert isinstance(data, bytes)
                message = decode(data)
                if isinstance(message, SyncStep1):
                    await self.ws.send(encode(SyncStep2(self.doc.get_update(message.state_vector))))
                    self.answered.set()
                elif isinstance(message, SyncStep2 | SyncUpdate):
                    self._applying = True
                    try:
                        self.doc.apply_update(message.update)
                    finally:
                        self._applying = False
                    if isinstance(message, SyncStep2):
                        self.synced.set()
                elif isinstance(message, AwarenessMessage):
                    for entry in decode_awareness(message.payload):
                        if entry.removed:
                            self.states.pop(entry.client_id, None)
                        else:
                            self.states[entry.client_id] = entry.state()
                self._changed.set()
                self._changed = anyio.Event()
        except ConnectionClosed:
            self._changed.set()

    async def insert(self, index: int, text: str) -> None:
        self.text.insert(index, text)
        updates, self._outgoing = self._outgoing, []
        for update in updates:
            await self.ws.send(encode(SyncUpdate(update)))

    async def wait(self, condition: Callable[[], bool]) -> None:
        """Wait until `condition` holds; fails at once if the connection closes first."""
        with anyio.fail_after(TIMEOUT):
            while not condition():  # bounded by the timeout; wakes on every message
                if self.ws.protocol.state is State.CLOSED:
                    close = self.ws.protocol.close_rcvd
                    raise AssertionError(f"closed before the condition held: {close}")
                await self._changed.wait()

    async def wait_text(self, expected: str) -> None:
        await self.wait(lambda: str(self.text) == expected)
