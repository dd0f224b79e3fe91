"""The sockets a `PresenceServer` serves: one small interface, two adapters.

pycrdt's `Channel` can neither close with a code nor tell how it ended, and both are what
presence tracking is about (a refusal is a 4429 close; an abrupt end is a
`connection_error`). So a connection comes in as a `Transport`: from the `websockets`
library (`WebsocketsTransport`) or from an ASGI server (`AsgiTransport`). Sending on a
transport that has ended drops the frame: the reader sees the end and the room moves on,
instead of every pending broadcast raising into pycrdt-websocket's task groups.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from rtc.errors import UnsupportedDataError

__all__ = ["AsgiTransport", "CloseFrame", "Transport", "WebsocketsTransport"]

CloseFrame = tuple[int, str]
AsgiMessage = dict[str, Any]
AsgiReceive = Callable[[], Awaitable[AsgiMessage]]
AsgiSend = Callable[[AsgiMessage], Awaitable[None]]


class Transport(Protocol):
    """One accepted WebSocket connection, as the presence server needs it."""

    @property
    def target(self) -> str:
        """The request target: the path and, if any, `?` and the query."""
        ...

    async def recv(self) -> bytes | None:
        """The next binary message, or None once the connection has ended.

        Raises:
            UnsupportedDataError: a text message (y-websocket sends binary only).
        """
        ...

    async def send(self, data: bytes) -> None:
        """Send a binary message; dropped if the connection has ended. Never raises."""
        ...

    async def close(self, code: int, reason: str) -> None:
        """Close with this code and reason (RFC 6455 §7.4)."""
        ...

    @property
    def received(self) -> CloseFrame | None:
        """The peer's close frame, once one arrived."""
        ...

    @property
    def sent(self) -> CloseFrame | None:
        """The close frame sent to the peer, once one was."""
        ...


class WebsocketsTransport:
    """A connection of the `websockets` library's asyncio server."""

    def __init__(self, connection: ServerConnection) -> None:
        self._connection = connection

    @property
    def target(self) -> str:
        request = self._connection.request
        return request.path if request is not None else "/"

    async def recv(self) -> bytes | None:
        try:
            data = await self._connection.recv()
        except ConnectionClosed:
            return None
        if isinstance(data, str):
            raise UnsupportedDataError("text frame")
        return data

    async def send(self, data: bytes) -> None:
        # A send after the end is dropped: the reader sees the end and records it.
        with contextlib.suppress(ConnectionClosed):
            await self._connection.send(data)

    async def close(self, code: int, reason: str) -> None:
        await self._connection.close(code, reason)

    @property
    def received(self) -> CloseFrame | None:
        frame = self._connection.protocol.close_rcvd
        return (frame.code, frame.reason) if frame is not None else None

    @property
    def sent(self) -> CloseFrame | None:
        frame = self._connection.protocol.close_sent
        return (frame.code, frame.reason) if frame is not None else None


class AsgiTransport:
    """An accepted ASGI WebSocket connection (the ASGI spec's `websocket` scope).

    Args:
        scope: the connection's scope.
        receive: the server's receive callable.
        send: the server's send callable.
    """

    def __init__(self, scope: AsgiMessage, receive: AsgiReceive, send: AsgiSend) -> None:
        query = scope.get("query_string", b"")
        path = str(scope.get("path", "/"))
        self._target = f"{path}?{query.decode('latin-1')}" if query else path
        self._receive = receive
        self._send = send
        self._received: CloseFrame | None = None
        self._sent: CloseFrame | None = None
        self._ended = False

    @property
    def target(self) -> str:
        return self._target

    async def recv(self) -> bytes | None:
        while not self._ended:
            message = await self._receive()
            if message["type"] == "websocket.disconnect":
                self._ended = True
                code = int(message.get("code", 1005))
                # A connection lost without a close frame is 1006 in the ASGI spec, but
                # uvicorn (0.54, `connection_lost`) says 1005 there, with no "reason" key;
                # a close frame it received always comes with its reason.
                if code != 1006 and not (code == 1005 and "reason" not in message):
                    self._received = (code, str(message.get("reason") or ""))
                return None
            if message["type"] != "websocket.receive":
                continue
            data = message.get("bytes")
            if data is None:
                raise UnsupportedDataError("text frame")
            return bytes(data)
        return None

    async def send(self, data: bytes) -> None:
        if self._ended or self._sent is not None:
            return
        # uvicorn raises ClientDisconnected (an OSError) for a send after the end: dropped,
        # the reader sees the end and records it.
        with contextlib.suppress(OSError):
            await self._send({"type": "websocket.send", "bytes": data})

    async def close(self, code: int, reason: str) -> None:
        if self._ended or self._sent is not None:
            return
        self._sent = (code, reason)
        with contextlib.suppress(OSError):
            await self._send({"type": "websocket.close", "code": code, "reason": reason})

    @property
    def received(self) -> CloseFrame | None:
        return self._received

    @property
    def sent(self) -> CloseFrame | None:
        return self._sent
