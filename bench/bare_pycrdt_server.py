"""A bare pycrdt-websocket server, the baseline for bench_servers.py. Not part of rtc.

pycrdt-websocket's ``WebsocketServer`` served through the ``websockets`` asyncio server with
nothing added: no awareness bookkeeping, no persistence. Room name = URL path.
Binds HOST:PORT (default 127.0.0.1:0) and prints one JSON line: {"port": N}.
"""

from __future__ import annotations

import json
import os
import sys

import anyio
from pycrdt import Channel
from pycrdt.websocket import WebsocketServer
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed


class WebsocketsChannel(Channel):
    """pycrdt's Channel over a ``websockets`` server connection."""

    def __init__(self, websocket: ServerConnection) -> None:
        self._websocket = websocket
        self._path = websocket.request.path if websocket.request is not None else "/"

    @property
    def path(self) -> str:
        return self._path

    def __aiter__(self) -> WebsocketsChannel:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self.recv()
        except ConnectionClosed:
            raise StopAsyncIteration from None

    async def send(self, message: bytes) -> None:
        await self._websocket.send(message)

    async def recv(self) -> bytes:
        message = await self._websocket.recv()
        return message if isinstance(message, bytes) else message.encode()


async def main() -> None:
    host = os.environ.get("HOST", "127.0.0.1")
    port = int(os.environ.get("PORT", "0"))
    async with WebsocketServer(rooms_ready=True, auto_clean_rooms=True) as yserver:

        async def handler(websocket: ServerConnection) -> None:
            await yserver.serve(WebsocketsChannel(websocket))

        async with serve(handler, host, port, max_size=None) as server:
            bound = next(iter(server.sockets)).getsockname()[1]
            print(json.dumps({"port": bound}), flush=True)
            # Run until the parent closes our stdin (or kills us); then go at once,
            # without waiting for rooms to wind down.
            await anyio.to_thread.run_sync(sys.stdin.read)
            os._exit(0)


if __name__ == "__main__":
    anyio.run(main)
