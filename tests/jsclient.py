"""Real JavaScript Yjs clients (yjs + y-websocket in Node) for Python tests. No server here.

``NodeClients`` runs ``node tests/js/driver.mjs`` and talks to it in line-delimited JSON;
each ``JsClient`` is one fresh ``Y.Doc`` with an unmodified ``WebsocketProvider``.
The driver pushes a notification for every status, sync, document, awareness and close
event, and this module keeps a mirror of each client's state from them, so every
``wait_*`` wakes on an event, never on a poll.

    async with NodeClients() as node:
        ada = await node.open(url, "7/42", user={"id": 1, "name": "Ada"})
        bob = await node.open(url, "7/42", user={"id": 2, "name": "Bob"})
        await ada.insert(0, "hello")
        await bob.wait_text("hello")

Set-up once: ``npm ci --prefix tests/js``.

Enter ``NodeClients`` in the test body, not in an async-generator fixture: it owns a task
group (the reader of the driver's stdout), and pytest-asyncio runs a fixture's set-up and
tear-down in different tasks, which anyio refuses. ``reference_server()`` has no task
group and is fine as a fixture.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import anyio
from anyio.abc import ByteReceiveStream, Process
from anyio.streams.buffered import BufferedByteReceiveStream

__all__ = [
    "JS_DIR",
    "TIMEOUT",
    "CloseEvent",
    "JsClient",
    "NodeClients",
    "NodeDriverError",
    "NodeSetupError",
    "reference_server",
]

JS_DIR = Path(__file__).parent / "js"
DRIVER = JS_DIR / "driver.mjs"
REFERENCE_SERVER = JS_DIR / "reference_server.mjs"
SETUP_COMMAND = f"npm ci --prefix {JS_DIR}"

# Default bound on every call and wait, scaled for slow machines.
TIMEOUT = 10.0 * float(os.environ.get("RTC_TEST_TIMEOUT_FACTOR", "1"))

_MAX_LINE = 16 * 1024 * 1024

AwarenessStates = dict[int, Any]


class NodeSetupError(RuntimeError):
    """Node or the harness's npm packages are missing."""


class NodeDriverError(RuntimeError):
    """The driver refused a command, or died."""


@dataclass(frozen=True)
class CloseEvent:
    """One `connection-close` seen by a provider.

    ``code`` and ``reason`` are None when the provider closed the socket itself
    (``disconnect()``, or y-websocket's 30 s no-message watchdog).
    """

    code: int | None
    reason: str | None
    local: bool


@dataclass
class _Mirror:
    """A client's state as last reported by the driver's notifications."""

    status: str = "disconnected"
    synced: bool = False
    text: str = ""
    received_remote: bool = False
    awareness: AwarenessStates = field(default_factory=dict)
    closes: list[CloseEvent] = field(default_factory=list)
    gave_up: CloseEvent | None = None


def _check_setup() -> None:
    if not (JS_DIR / "node_modules").is_dir():
        raise NodeSetupError(f"{JS_DIR / 'node_modules'} is missing: run `{SETUP_COMMAND}` first")


class JsClient:
    """One Y.Doc + WebsocketProvider inside the Node driver.

    The document's shared text is ``doc.getText('content')``.
    """

    def __init__(self, node: NodeClients, name: str, client_id: int) -> None:
        self._node = node
        self.name = name
        self.client_id = client_id
        """The Y.Doc's clientID, which is also its awareness clientID."""
        self.state = _Mirror()
        self._waiters: list[tuple[Callable[[_Mirror], bool], anyio.Event]] = []

    def __repr__(self) -> str:
        return f"<JsClient {self.name} clientID={self.client_id} {self.state.status}>"

    async def _call(self, cmd: str, **args: Any) -> dict[str, Any]:
        with self._node.bounded():
            result = await self._node.request(cmd, name=self.name, **args)
        return result

    def _notify(self, message: dict[str, Any]) -> None:
        state = self.state
        match message["event"]:
            case "status":
                state.status = message["status"]
            case "synced":
                state.synced = message["synced"]
            case "update":
                state.text = message["text"]
                state.received_remote = state.received_remote or message["remote"]
            case "awareness":
                state.awareness = {int(k): v for k, v in message["states"].items()}
            case "close":
                state.closes.append(
                    CloseEvent(message["code"], message["reason"], message["local"])
                )
            case "closed":
                state.gave_up = CloseEvent(message["code"], message["reason"], False)
        # Check every waiter against every intermediate state, so a short-lived
        # state (presence removed, then re-added on reconnect) is not missed.
        for predicate, event in list(self._waiters):
            if predicate(state):
                event.set()

    async def wait_for(self, predicate: Callable[[_Mirror], bool]) -> None:
        """Wait until ``predicate(self.state)`` holds, checked on each notification."""
        if predicate(self.state):
            return
        event = anyio.Event()
        waiter = (predicate, event)
        self._waiters.append(waiter)
        try:
            with self._node.bounded():
                await event.wait()
        finally:
            self._waiters.remove(waiter)

    async def insert(self, index: int, text: str) -> str:
        """Insert into the shared text; returns the local text after the insert."""
        result = await self._call("insert", index=index, text=text)
        return str(result["text"])

    async def text(self) -> str:
        result = await self._call("text")
        return str(result["text"])

    async def status(self) -> dict[str, Any]:
        """The driver's summary: status, synced, text, closes, receivedRemote, ..."""
        return await self._call("status")

    async def wait_text(self, expected: str) -> None:
        await self.wait_for(lambda state: state.text == expected)

    async def wait_synced(self) -> None:
        """Wait until the provider has received sync step 2 on its current connection."""
        await self.wait_for(lambda state: state.synced)

    async def wait_status(self, status: str) -> None:
        await self.wait_for(lambda state: state.status == status)

    async def awareness(self) -> AwarenessStates:
        """All awareness states this client knows, by clientID (its own included)."""
        result = await self._call("awareness")
        return {int(k): v for k, v in result["states"].items()}

    async def wait_awareness(self, predicate: Callable[[AwarenessStates], bool]) -> AwarenessStates:
        """Wait until ``predicate(states)`` holds; returns the states that satisfied it."""
        seen: list[AwarenessStates] = []

        def check(state: _Mirror) -> bool:
            if predicate(state.awareness):
                seen.append(dict(state.awareness))
                return True
            return False

        await self.wait_for(check)
        return seen[0]

    async def wait_closed(self) -> tuple[int | None, str | None]:
        """Wait for the first close of the connection not made locally; return (code, reason).

        A ``terminate()`` shows up here too, as 1006 with an empty reason.
        """
        await self.wait_for(lambda state: any(not close.local for close in state.closes))
        close = next(close for close in self.state.closes if not close.local)
        return close.code, close.reason

    async def set_awareness(self, state: Any) -> None:
        """Replace the local awareness state; ``None`` announces leaving."""
        await self._call("setAwareness", state=state)

    async def set_awareness_field(self, field: str, value: Any) -> None:
        await self._call("setAwarenessField", field=field, value=value)

    async def terminate(self, *, reconnect: bool = False) -> None:
        """Destroy the socket without a close frame (ws ``terminate()``).

        Args:
            reconnect: let the provider reconnect with its backoff (a network blip);
                by default it stays down (a killed tab).
        """
        await self._call("terminate", reconnect=reconnect)

    async def disconnect(self) -> None:
        """``provider.disconnect()``: announces awareness null, then a clean close."""
        await self._call("disconnect")

    async def reconnect(self) -> None:
        """``provider.connect()`` on the same Y.Doc, so the same clientID."""
        await self._call("connect")

    async def close(self) -> None:
        """``provider.destroy()`` and ``doc.destroy()``; the handle is dead afterwards."""
        await self._call("destroy")
        self._node.forget(self)


class NodeClients:
    """The Node driver process and its clients; use as ``async with NodeClients() as node``.

    Args:
        node: the Node executable.
        timeout: backstop bound on every command and wait, so nothing hangs forever.
            Tighter bounds belong to the caller (``anyio.fail_after``); raise this one
            for a test that legitimately waits longer.
    """

    def __init__(self, *, node: str = "node", timeout: float = TIMEOUT) -> None:
        self._node = node
        self.timeout = timeout
        self._clients: dict[str, JsClient] = {}
        self._pending: dict[int, tuple[anyio.Event, list[dict[str, Any]]]] = {}
        self._next_id = 0
        self._opened = 0
        self._process: Process | None = None
        self._stack = AsyncExitStack()
        self._dead: str | None = None

    async def __aenter__(self) -> Self:
        _check_setup()
        async with AsyncExitStack() as stack:
            try:
                process = await anyio.open_process(
                    [self._node, str(DRIVER)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=None,
                    cwd=JS_DIR,
                )
            except FileNotFoundError as error:
                raise NodeSetupError(f"cannot run {self._node!r}: {error}") from error
            self._process = process
            task_group = await stack.enter_async_context(anyio.create_task_group())
            assert process.stdout is not None
            task_group.start_soon(self._read, process.stdout)
            # Runs before the task group exits: killing the process ends the reader.
            stack.push_async_callback(self._stop)
            with anyio.fail_after(self.timeout):
                await self.request("ping")
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._stack.__aexit__(exc_type, exc, traceback)

    async def _stop(self) -> None:
        process = self._process
        if process is None:
            return
        with anyio.CancelScope(shield=True):
            if process.returncode is None:
                process.kill()
            await process.wait()
            await process.aclose()

    async def _read(self, stdout: ByteReceiveStream) -> None:
        lines = BufferedByteReceiveStream(stdout)
        try:
            while True:
                line = await lines.receive_until(b"\n", _MAX_LINE)
                self._dispatch(json.loads(line))
        except (
            anyio.IncompleteRead,
            anyio.EndOfStream,
            anyio.ClosedResourceError,
            anyio.BrokenResourceError,
        ):
            pass
        finally:
            self._dead = "the node driver exited"
            for event, _ in self._pending.values():
                event.set()

    def _dispatch(self, message: dict[str, Any]) -> None:
        if "event" in message:
            client = self._clients.get(message["name"])
            if client is not None:
                client._notify(message)
            return
        pending = self._pending.get(message["id"])
        if pending is not None:
            pending[1].append(message)
            pending[0].set()

    async def request(self, cmd: str, **args: Any) -> dict[str, Any]:
        """Send one command and wait for its response; raises NodeDriverError on refusal."""
        if self._dead is not None or self._process is None or self._process.stdin is None:
            raise NodeDriverError(self._dead or "the node driver is not running")
        self._next_id += 1
        request_id = self._next_id
        slot: tuple[anyio.Event, list[dict[str, Any]]] = (anyio.Event(), [])
        self._pending[request_id] = slot
        try:
            line = json.dumps({"id": request_id, "cmd": cmd, **args}) + "\n"
            await self._process.stdin.send(line.encode())
            await slot[0].wait()
        finally:
            del self._pending[request_id]
        if not slot[1]:
            raise NodeDriverError(self._dead or "no response")
        response = slot[1][0]
        if not response["ok"]:
            raise NodeDriverError(f"{cmd}: {response['error']}")
        result: dict[str, Any] = response["result"]
        return result

    async def open(
        self,
        url: str,
        room: str,
        *,
        user: dict[str, Any] | None = None,
        connect: bool = True,
        params: dict[str, str] | None = None,
    ) -> JsClient:
        """A new Y.Doc + WebsocketProvider(url, room, doc) connecting to ``url/room``.

        Args:
            user: ``{"id": int, "name": str}`` sets the local awareness state
                ``{"collaboratorInfo": {"id", "name", "enteredAt"}}`` before connecting;
                ``None`` keeps y-websocket's default ``{}``.
            connect: connect now (otherwise call ``reconnect()`` later).
            params: URL query parameters (y-websocket's ``params`` option).
        """
        self._opened += 1
        name = f"c{self._opened}"
        client = JsClient(self, name, client_id=0)
        # Registered before the request so no notification is lost.
        self._clients[name] = client
        try:
            with self.bounded():
                result = await self.request(
                    "open",
                    name=name,
                    url=url,
                    room=room,
                    user=user,
                    connect=connect,
                    params=params or {},
                )
        except BaseException:
            del self._clients[name]
            raise
        client.client_id = int(result["clientID"])
        return client

    def bounded(self) -> AbstractContextManager[anyio.CancelScope]:
        """The backstop every command and wait runs under."""
        return anyio.fail_after(self.timeout)

    def forget(self, client: JsClient) -> None:
        self._clients.pop(client.name, None)


@asynccontextmanager
async def reference_server() -> AsyncIterator[str]:
    """The reference @y/websocket-server on 127.0.0.1:<ephemeral>; yields its base ws:// URL.

    Room ``7/42`` on ``f"{url}/rooms"`` is the doc named ``rooms/7/42`` there.
    """
    _check_setup()
    async with await anyio.open_process(
        ["node", str(REFERENCE_SERVER)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=None,
        cwd=JS_DIR,
        env={**os.environ, "HOST": "127.0.0.1", "PORT": "0"},
    ) as process:
        try:
            assert process.stdout is not None
            with anyio.fail_after(TIMEOUT):
                line = await BufferedByteReceiveStream(process.stdout).receive_until(b"\n", 4096)
            port = int(json.loads(line)["port"])
            yield f"ws://127.0.0.1:{port}"
        finally:
            with anyio.CancelScope(shield=True):
                process.kill()
                await process.wait()
