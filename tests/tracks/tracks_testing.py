"""Test helpers for tracks: a real HTTP backend on 127.0.0.1 that the test can make fail."""

from __future__ import annotations

import gzip
import json
import os
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import anyio
import anyio.abc

from tracks import Event

TIMEOUT = 5.0 * float(os.environ.get("TEST_TIMEOUT_FACTOR", "1"))
"""Seconds for `anyio.fail_after` around every wait; scale it on slow machines."""


def files(directory: Path, pattern: str = "*") -> list[Path]:
    """The files in ``directory`` matching ``pattern``, sorted (blocking; fine in tests)."""
    return sorted(directory.glob(pattern))


def make_events(count: int, *, name: str = "jetpack_rtc_join", start: int = 0) -> list[Event]:
    """Events with distinct sessions and increasing ts, so order is checkable."""
    return [
        Event(
            name,
            {"blog_id": 1, "post_id": 1 + n % 3, "session_id": f"s{n}", "n": n},
            ts=1_700_000_000_000 + n,
        )
        for n in range(start, start + count)
    ]


@dataclass(frozen=True)
class Reply:
    """What the backend answers to one request."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    hang: bool = False


@dataclass(frozen=True)
class Seen:
    """One request the backend received."""

    at: float  # time.monotonic()
    status: int | None  # None: it hung
    headers: dict[str, str]
    body: Any
    event_ids: list[str]


def event_ids_in(body: Any) -> list[str]:
    """Event ids from a generic, Tracks or PostHog batch body."""
    items = body.get("events") or body.get("batch") or []
    return [item.get("event_id") or item.get("_eid") or item.get("uuid") for item in items]


class Backend:
    """A real HTTP/1.1 analytics endpoint on 127.0.0.1, port chosen by the OS.

    Replies come from `script` in order, then `default`. Events count as received
    only when answered 200. `stop()` closes the port (connection refused);
    `start()` listens again on the same port.
    """

    def __init__(self) -> None:
        self.port = 0
        self.script: deque[Reply] = deque()
        self.default = Reply()
        self.requests: list[Seen] = []
        self.received: Counter[str] = Counter()
        self._changed = anyio.Event()
        self._task_group: anyio.abc.TaskGroup | None = None
        self._serving: anyio.CancelScope | None = None
        self._stopped = anyio.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/batch"

    async def __aenter__(self) -> Self:
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        assert self._task_group is not None
        self._task_group.cancel_scope.cancel()
        await self._task_group.__aexit__(exc_type, exc, traceback)

    async def start(self) -> None:
        assert self._task_group is not None
        multi = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=self.port)
        (listener,) = multi.listeners  # one address: 127.0.0.1
        self.port = listener.extra(anyio.abc.SocketAttribute.local_port)
        self._stopped = anyio.Event()
        await self._task_group.start(self._serve, listener)

    async def stop(self) -> None:
        """Close the port and every open connection."""
        assert self._serving is not None
        self._serving.cancel()
        await self._stopped.wait()

    async def _serve(
        self, listener: anyio.abc.SocketListener, *, task_status: anyio.abc.TaskStatus[None]
    ) -> None:
        try:
            with anyio.CancelScope() as self._serving:
                async with listener, anyio.create_task_group() as connections:
                    task_status.started()
                    while True:
                        stream = await listener.accept()
                        connections.start_soon(self._handle, stream)
        finally:
            self._stopped.set()

    async def _handle(self, stream: anyio.abc.SocketStream) -> None:
        async with stream:
            buffer = b""
            while True:
                try:
                    while b"\r\n\r\n" not in buffer:
                        buffer += await stream.receive()
                    head, _, buffer = buffer.partition(b"\r\n\r\n")
                    lines = head.decode("latin-1").split("\r\n")
                    headers = {
                        key.strip().lower(): value.strip()
                        for key, _, value in (line.partition(":") for line in lines[1:])
                    }
                    length = int(headers.get("content-length", "0"))
                    while len(buffer) < length:
                        buffer += await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    return
                raw, buffer = buffer[:length], buffer[length:]
                if headers.get("content-encoding") == "gzip":
                    raw = gzip.decompress(raw)
                body = json.loads(raw)
                reply = self.script.popleft() if self.script else self.default
                ids = event_ids_in(body)
                if reply.hang:
                    self._note(Seen(time.monotonic(), None, headers, body, ids))
                    await anyio.sleep_forever()
                self._note(Seen(time.monotonic(), reply.status, headers, body, ids))
                if reply.status == 200:
                    self.received.update(ids)
                extra = "".join(f"{k}: {v}\r\n" for k, v in reply.headers.items())
                await stream.send(
                    f"HTTP/1.1 {reply.status} X\r\nContent-Length: 2\r\n{extra}\r\n{{}}".encode()
                )

    def _note(self, seen: Seen) -> None:
        self.requests.append(seen)
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds; re-checked after every request."""
        while not predicate():
            await self._changed.wait()


class ScriptedSink:
    """A sink for engine tests: raises the scripted errors in turn, can be held shut.

    Attributes:
        batches: every batch written successfully, in order.
        attempts: how many times `write` was called.
        failures: exceptions to raise on the next calls, in order.
        down: while set, every write raises `TransientError`.
        gate: when set, writes wait until it is set (to hold the writer busy).
    """

    description = "scripted:"

    def __init__(self) -> None:
        self.batches: list[list[Event]] = []
        self.attempts = 0
        self.failures: deque[BaseException] = deque()
        self.down = False
        self.gate: anyio.Event | None = None
        self.closed = False
        self._changed = anyio.Event()

    @property
    def events(self) -> list[Event]:
        return [event for batch in self.batches for event in batch]

    async def write(self, batch: Sequence[Event]) -> None:
        from tracks import TransientError

        self.attempts += 1
        self._signal()
        if self.gate is not None:
            await self.gate.wait()
        if self.failures:
            raise self.failures.popleft()
        if self.down:
            raise TransientError("scripted: down")
        self.batches.append(list(batch))
        self._signal()

    async def aclose(self) -> None:
        self.closed = True

    def _signal(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds; re-checked after every write attempt."""
        while not predicate():
            await self._changed.wait()
