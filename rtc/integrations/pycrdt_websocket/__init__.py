"""Presence tracking for pycrdt-websocket applications (extra `rtc-presence[pycrdt-websocket]`).

Wrap the `WebsocketServer` an application already runs; every connection then gets this
project's sessions, contributor roster, limits and events:

    server = WebsocketServer()
    presence = PresenceServer(server, recorders=[recorder], limits=RoomLimits(max_contributors=5))
    async with server, websockets.asyncio.server.serve(presence.serve_websockets, host, port):
        ...
    app = presence.asgi()  # or under any ASGI server
"""

from rtc.integrations.pycrdt_websocket.presence import (
    PresenceASGIServer,
    PresenceServer,
    RoomOf,
    room_from_path,
)
from rtc.integrations.pycrdt_websocket.transports import (
    AsgiTransport,
    CloseFrame,
    Transport,
    WebsocketsTransport,
)

__all__ = [
    "AsgiTransport",
    "CloseFrame",
    "PresenceASGIServer",
    "PresenceServer",
    "RoomOf",
    "Transport",
    "WebsocketsTransport",
    "room_from_path",
]
