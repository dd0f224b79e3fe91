"""Presence tracking around a pycrdt-websocket `WebsocketServer`: sessions, roster, limits
and events for every connection, with the document left to pycrdt-websocket.

A connection is held until its first awareness update names its session (y-websocket sends
it right after sync step 1); it is then admitted or refused under `RoomLimits`, before
pycrdt-websocket's `YRoom.serve` sends anything (sync step 1, presence), and only then handed
to `WebsocketServer.serve` with what it sent replayed first. When it ends, its presence is
removed from the room and the removal broadcast at once (pycrdt-websocket alone leaves it
to each client's 30 s awareness timeout), and `leave` / `connection_error` are recorded.
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from inspect import isawaitable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
from pycrdt import create_awareness_message
from pycrdt.websocket import ASGIServer, WebsocketServer, YRoom
from websockets.asyncio.server import ServerConnection

from rtc.actions import Blocked, Session
from rtc.analytics.feed import EventFeed
from rtc.analytics.tracking import Tracking
from rtc.awareness import AwarenessEntry, decode_awareness, own_entry, user_of
from rtc.closes import classify
from rtc.errors import (
    AnnounceTimeoutError,
    CloseCode,
    HeldTooMuchError,
    HeldTotalError,
    RtcError,
)
from rtc.ids import RoomKey, id_from_text
from rtc.integrations.pycrdt_websocket.transports import (
    AsgiTransport,
    Transport,
    WebsocketsTransport,
)
from rtc.integrations.roster import Roster
from rtc.limits import HeldBytes, RoomLimits
from rtc.metrics import LiveFigures, Metrics, recorder_figures
from rtc.protocol import AwarenessMessage, decode
from tracks import Recorder
from tracks.event import now_ms

__all__ = ["PresenceASGIServer", "PresenceServer", "RoomOf", "room_from_path"]

logger = logging.getLogger(__name__)

RoomOf = Callable[[str], tuple[int, int] | None]
ConnectHook = Callable[[dict[str, Any], dict[str, Any]], Awaitable[bool] | bool]

# A path that names no room: the connection is already upgraded here, so the HTTP 404 our
# own server answers becomes a close in y-websocket's permanent range (4400-4499).
UNKNOWN_ROOM = (4404, "unknown-room")
# How long the removal of a gone connection's presence may take to reach the others.
REMOVAL_DEADLINE = 2.0


def room_from_path(path: str) -> tuple[int, int] | None:
    """`(blog_id, post_id)` from `/rooms/{blog_id}/{post_id}`, or None for any other path."""
    parts = path.split("/")
    if len(parts) != 4 or parts[0] or parts[1] != "rooms":
        return None
    blog_id, post_id = id_from_text(parts[2]), id_from_text(parts[3])
    return None if blog_id is None or post_id is None else (blog_id, post_id)


class PresenceServer:
    """Serves connections through a pycrdt-websocket `WebsocketServer`, with presence.

    The wrapped server keeps its own lifecycle (`async with server:`), rooms, stores and
    providers; its rooms are named by the request path (without the query). Recorders
    are the caller's to enter and close.

    Args:
        server: the pycrdt-websocket server that holds the documents.
        recorders: where events go (`tracks` recorders; `record()` only enqueues).
        limits: admission limits and bounds on what a newcomer may send.
        room_of: `(blog_id, post_id)` from a request path, None for no room.
        prefix: prefix of every event name.
        announce_timeout: seconds a connection may take to name its session.
    """

    def __init__(
        self,
        server: WebsocketServer,
        *,
        recorders: Sequence[Recorder] = (),
        limits: RoomLimits | None = None,
        room_of: RoomOf = room_from_path,
        prefix: str = "jetpack_rtc_",
        announce_timeout: float = 10.0,
    ) -> None:
        if announce_timeout <= 0:
            raise ValueError("announce_timeout must be > 0")
        self.server = server
        self.roster = Roster(limits or RoomLimits())
        self.feed = EventFeed()
        self.metrics = Metrics(self._live, lambda: recorder_figures(recorders))
        self.tracking = Tracking(recorders, feed=self.feed, metrics=self.metrics, prefix=prefix)
        self._room_of = room_of
        self._announce_timeout = announce_timeout
        self._held = HeldBytes(self.roster.limits.max_held_total)
        self._ids = itertools.count(1)
        self._open = 0
        # pycrdt-websocket 0.16.5 starts a room twice when two connections ask for it while
        # its start is under way (`start_room` checks `started` before `start` has set it),
        # and the second start waits on the room's lock forever: rooms are fetched one at
        # a time here, so `WebsocketServer.serve` always finds its room started.
        self._room_lock = anyio.Lock()

    async def serve_websockets(self, connection: ServerConnection) -> None:
        """The handler for `websockets.asyncio.server.serve`."""
        await self.serve(WebsocketsTransport(connection))

    def asgi(self, *, on_connect: ConnectHook | None = None) -> PresenceASGIServer:
        """An ASGI application (pycrdt-websocket's `ASGIServer`, with presence)."""
        return PresenceASGIServer(self, on_connect=on_connect)

    async def serve(self, transport: Transport) -> None:
        """Serve one accepted connection until it ends."""
        connection = next(self._ids)
        connected_at_ms = now_ms()
        target = urlsplit(transport.target)
        room = self._room(target.path)
        if room is None:
            logger.info("connection %d refused: no room at its path", connection)
            await transport.close(*UNKNOWN_ROOM)
            return
        self._open += 1
        try:
            await self._serve(transport, connection, connected_at_ms, room, target.path,
                              parse_qs(target.query).get("post_type", [None])[0])
        finally:
            self._open -= 1

    async def _serve(
        self,
        transport: Transport,
        connection: int,
        connected_at_ms: int,
        room: RoomKey,
        path: str,
        post_type: str | None,
    ) -> None:
        held: list[bytes] = []
        try:
            announced = await self._announce(transport, held)
        except RtcError as error:
            logger.info("connection %d to room %s refused: %s", connection, room, error.detail)
            await transport.close(error.close_code, error.reason)
            self._record_error(room, connection, connected_at_ms, None, error)
            return
        finally:
            self._held.release(sum(map(len, held)))
        if announced is None:  # gone before naming its session
            self._record_error(room, connection, connected_at_ms, None, None, transport)
            return
        entry, state = announced
        user_id, name = user_of(state)
        decision = self.roster.admit(
            room,
            connection=connection,
            session_id=entry.client_id,
            user_id=user_id,
            name=name,
            connected_at_ms=connected_at_ms,
            now_ms=now_ms(),
        )
        if isinstance(decision, Blocked):
            logger.info("connection %d to room %s blocked: %s limit %d",
                        connection, room, decision.limit_kind, decision.limit)
            self.tracking.blocked(decision)
            await transport.close(CloseCode.LIMIT_EXCEEDED, "connection-limit-exceeded")
            return
        logger.info("connection %d joined room %s as session %d", connection, room,
                    entry.client_id)
        self.tracking.joined(decision, post_type=post_type)
        channel = _Admitted(transport, path, held)
        yroom: YRoom | None = None
        try:
            async with self._room_lock:
                yroom = await self.server.get_room(path)
            await self._send_presence(yroom, channel, entry.client_id)
            await self.server.serve(channel)
        finally:
            if channel.error is not None:
                with anyio.CancelScope(shield=True):
                    await transport.close(channel.error.close_code, channel.error.reason)
            session = decision.session
            if yroom is not None:
                self._remove_presence(yroom, room, session)
            ending = classify(
                error=channel.error, decided=None, received=transport.received,
                sent=transport.sent,
            )
            left = self.roster.leave(connection, now_ms=now_ms(), clean=ending.clean)
            if left is not None:
                self.tracking.left(left)
            self._record_error(room, connection, connected_at_ms, session, channel.error,
                               transport)
            logger.info("connection %d to room %s ended: close %d", connection, room,
                        ending.close_code)

    async def _announce(
        self, transport: Transport, held: list[bytes]
    ) -> tuple[AwarenessEntry, Any] | None:
        """Hold what a newcomer sends until its first awareness update names its session."""
        limits = self.roster.limits
        size = 0
        try:
            with anyio.fail_after(self._announce_timeout):
                while True:
                    data = await transport.recv()
                    if data is None:
                        return None
                    message = decode(data)
                    if not self._held.hold(len(data)):
                        raise HeldTotalError("held-total")
                    held.append(data)
                    size += len(data)
                    if len(held) > limits.max_held_messages or size > limits.max_held_bytes:
                        raise HeldTooMuchError("too-much-held")
                    if isinstance(message, AwarenessMessage):
                        entries = decode_awareness(
                            message.payload, max_entries=limits.max_awareness_entries
                        )
                        if entries:
                            return own_entry(
                                entries[0], None, max_state=limits.max_awareness_state
                            )
        except TimeoutError:
            raise AnnounceTimeoutError("never named its session") from None

    async def _send_presence(self, yroom: YRoom, channel: _Admitted, session_id: int) -> None:
        """Send a newcomer everyone's presence at once (pycrdt-websocket waits for each
        client's 15 s awareness renewal)."""
        awareness = yroom.awareness
        others = [
            client for client in awareness.states
            if client not in (awareness.client_id, session_id)
        ]
        if others:
            update = awareness.encode_awareness_update(others)
            await channel.send(create_awareness_message(update))

    def _remove_presence(self, yroom: YRoom, room: RoomKey, session: Session) -> None:
        """Remove a gone session's awareness state and broadcast the removal now."""
        if any(
            other.session_id == session.session_id and other.connection != session.connection
            for other in self.roster.sessions(room)
        ):
            return  # another connection of this session (a reconnect) owns the state now
        if session.session_id not in yroom.awareness.states:
            return  # it said goodbye itself (y-websocket sends a null state on close)
        # "local" is the origin YRoom broadcasts (its `send_server_awareness`): the removal
        # goes to every remaining client, with the state's clock, from the room's tasks.
        origin = "local" if yroom.clients and yroom.started.is_set() else None
        yroom.awareness.remove_awareness_states([session.session_id], origin)

    def _record_error(
        self,
        room: RoomKey,
        connection: int,
        connected_at_ms: int,
        session: Session | None,
        error: RtcError | None,
        transport: Transport | None = None,
    ) -> None:
        ending = classify(
            error=error,
            decided=None,
            received=transport.received if transport is not None else None,
            sent=transport.sent if transport is not None else None,
        )
        if ending.error_code is None:
            return
        self.tracking.connection_error(
            room,
            connection=connection,
            connected_at_ms=connected_at_ms,
            session=session,
            error_code=ending.error_code,
            close_code=ending.close_code,
        )

    def _room(self, path: str) -> RoomKey | None:
        ids = self._room_of(path)
        if ids is None:
            return None
        try:
            return RoomKey(*ids)
        except (TypeError, ValueError):
            logger.warning("room_of(%r) returned ids that are not positive ints below 2**63",
                           path)
            return None

    def _live(self) -> LiveFigures:
        rooms = self.roster.rooms()
        return LiveFigures(
            connections=self._open,
            rooms=len(rooms),
            sessions=sum(len(self.roster.sessions(room)) for room in rooms),
            contributors=sum(len(self.roster.contributors(room)) for room in rooms),
        )


class _Admitted:
    """The pycrdt `Channel` an admitted connection is served through: what it sent while
    held comes first, then its transport; every frame is checked before pycrdt reads it
    (pycrdt's decoder is not meant for hostile bytes)."""

    def __init__(self, transport: Transport, path: str, held: list[bytes]) -> None:
        self._transport = transport
        self._path = path
        self._held = deque(held)
        self.error: RtcError | None = None

    @property
    def path(self) -> str:
        return self._path

    def __aiter__(self) -> _Admitted:
        return self

    async def __anext__(self) -> bytes:
        if self._held:
            return self._held.popleft()
        if self.error is not None:
            raise StopAsyncIteration
        try:
            data = await self._transport.recv()
            if data is not None:
                decode(data)
        except RtcError as error:
            self.error = error
            raise StopAsyncIteration from None
        if data is None:
            raise StopAsyncIteration
        return data

    async def recv(self) -> bytes:
        return await self.__anext__()

    async def send(self, message: bytes) -> None:
        await self._transport.send(message)


class PresenceASGIServer(ASGIServer):
    """pycrdt-websocket's `ASGIServer`, serving each WebSocket through a `PresenceServer`.

    Args:
        presence: the presence server (its `server` holds the documents).
        on_connect: as `ASGIServer`'s: called with the connect message and the scope;
            returning True refuses the connection.
    """

    def __init__(self, presence: PresenceServer, *, on_connect: ConnectHook | None = None) -> None:
        super().__init__(presence.server, on_connect=on_connect)
        self._presence = presence
        self._connect_hook = on_connect

    async def __call__(
        self,
        scope: dict[str, Any],
        receive: Callable[[], Awaitable[dict[str, Any]]],
        send: Callable[[dict[str, Any]], Awaitable[None]],
    ) -> None:
        if scope["type"] != "websocket":
            await super().__call__(scope, receive, send)
            return
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        if self._connect_hook is not None:
            refuse = self._connect_hook(message, scope)
            if isawaitable(refuse):
                refuse = await refuse
            if refuse:
                return  # the ASGI server answers 403 to a connection never accepted
        await send({"type": "websocket.accept"})
        await self._presence.serve(AsgiTransport(scope, receive, send))
