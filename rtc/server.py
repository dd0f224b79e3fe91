"""The WebSocket driver: accepts connections, feeds rooms, carries out what they decide.

Messages reach the room from the protocol callback that parsed them (`delivery.py`): no
queue, no task switch per message; the websockets handler only waits for the end. Sending
never awaits: a frame is encoded once for all its recipients and queued to each, written at
the end of the loop tick, bounded by `outbox_limit`; a peer whose backlog is full is closed
with 1013 so that it holds back nobody else.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

import anyio
from anyio.abc import TaskGroup
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.frames import Close as CloseFrame

from rtc.analytics.capture import CaptureSettings
from rtc.analytics.feed import EventFeed
from rtc.analytics.tracking import Tracking
from rtc.auth import Grant, verify
from rtc.closes import classify
from rtc.config import ServerConfig
from rtc.delivery import DeliveringConnection, encode
from rtc.documents import DocumentStore
from rtc.errors import (
    AnnounceTimeoutError,
    CloseCode,
    RateLimitedError,
    RoomUnavailableError,
    RtcError,
    ServerBusyError,
    UnsupportedDataError,
)
from rtc.history import SessionHistory
from rtc.http.analytics import AnalyticsApi
from rtc.http.connection import connection_class
from rtc.http.endpoints import ConnectionCounts, Endpoints, address_of
from rtc.http.routes import FeedRoute, RoomRoute
from rtc.http.stats import StatsApi
from rtc.metrics import LiveFigures, Metrics, RecorderFigures
from rtc.protocol import decode
from rtc.ratelimit import TokenBucket
from rtc.room import (
    ECHO,
    Action,
    Blocked,
    Broadcast,
    Close,
    Identity,
    Joined,
    Left,
    Note,
    Persist,
    Room,
    RoomKey,
    RoomLimits,
    Send,
)
from rtc.rooms import RoomRegistry
from tracks import Recorder, open_recorder
from tracks.presence.reading import locate
from tracks.streams import StreamConfig, load_streams

__all__ = ["RtcServer"]

logger = logging.getLogger(__name__)

_ECHO_COST = 0.05  # an awareness echo costs a twentieth of a message against the rate limit


_CLOSE_TIMEOUT = 3.0  # seconds a closing handshake may take before the connection is cut


async def _close_within(ws: DeliveringConnection, code: int, reason: str) -> None:
    """Close with a code, or cut the connection if that cannot finish in time.

    websockets' close() first waits for the peer to drain what is buffered for it, with no
    deadline: a peer that stopped reading (the 1013 case) would never be let go.
    """
    with anyio.move_on_after(_CLOSE_TIMEOUT):
        await ws.close(code, reason)
        return
    if ws.transport is not None:
        ws.transport.abort()


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(slots=True)
class _Peer:
    id: int
    ws: DeliveringConnection
    route: RoomRoute
    room: Room
    connected_at_ms: int
    bucket: TokenBucket
    grant: Grant | None = None
    close_code: int | None = None
    close_reason: str = ""
    error: RtcError | None = None
    announce_deadline: asyncio.TimerHandle | None = None


class RtcServer:
    """The room server. Use as `async with RtcServer(config) as server:`.

    Args:
        config: the server configuration.
        recorders: where events go; by default opened from `config.recorder_urls` and closed
            with the server. Recorders passed in are used as they are and left open.
    """

    def __init__(self, config: ServerConfig, *, recorders: Sequence[Recorder] | None = None):
        self.config = config
        self._given_recorders = recorders
        self.recorders: tuple[Recorder, ...] = tuple(recorders or ())
        self._stack = contextlib.AsyncExitStack()
        self._ids = itertools.count(1)
        self._peers: dict[int, _Peer] = {}
        self._connections = ConnectionCounts()
        self._expiries: list[tuple[float, int]] = []
        self._server: Server | None = None
        self.feed = EventFeed()
        self.metrics = Metrics(self._live_figures, self._recorder_figures)
        self.history = SessionHistory()
        self._task_group: TaskGroup
        self._rooms: RoomRegistry
        self._store: DocumentStore
        self._tracking: Tracking
        self._analytics: AnalyticsApi
        self.stats: StatsApi
        self._endpoints: Endpoints

    # --- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        config = self.config
        stack = self._stack
        try:
            if self._given_recorders is None:
                opened = []
                for index, url in enumerate(config.recorder_urls):
                    options: dict[str, object] = {}
                    if url.startswith(("http://", "https://", "sqlite:", "jsonl:/")):
                        # A backend outage or a store locked longer than the retries must not
                        # lose events: batches wait on disk and are re-sent, oldest first.
                        options["spool"] = config.data_dir / "spool" / f"recorder-{index}"
                    recorder = open_recorder(url, **options)
                    opened.append(await stack.enter_async_context(recorder))
                self.recorders = tuple(opened)
            self._store = await stack.enter_async_context(
                DocumentStore(
                    config.data_dir / "documents.sqlite",
                    flush_interval=config.store_flush_interval,
                )
            )
            self._task_group = await stack.enter_async_context(anyio.create_task_group())
            self._rooms = RoomRegistry(
                self._store,
                limits=RoomLimits(
                    max_contributors=config.max_contributors,
                    max_connections=config.max_connections_per_room,
                ),
                history=self.history,
                grace=config.room_grace,
                task_group=self._task_group,
            )
            streams = (
                load_streams(config.streams)
                if config.streams is not None
                else StreamConfig.default(prefix=config.event_prefix)
            )
            named = {}
            for name, url in streams.recorder_urls().items():
                named[name] = await stack.enter_async_context(open_recorder(url))
            capture = CaptureSettings(config.data_dir / "capture.json")
            self._tracking = Tracking(
                self.recorders,
                feed=self.feed,
                metrics=self.metrics,
                prefix=config.event_prefix,
                capture=capture,
                streams=streams,
                named_recorders=named,
            )
            self.recorders = (*self.recorders, *named.values())
            self._analytics = AnalyticsApi(
                config,
                tracking=self._tracking,
                metrics=self.metrics,
                capture=capture,
                event_store=self._event_store_path(),
            )
            self.stats = StatsApi(
                event_store=self._event_store_path(),
                rooms=self._rooms.loaded,
                rollup_interval=config.rollup_interval,
                retention_days=config.retention_days,
            )
            await self._task_group.start(self.stats.run)
            if config.secret is not None:
                self._task_group.start_soon(self._expire_tokens)
            self._endpoints = Endpoints(
                config,
                metrics=self.metrics,
                rooms=self._rooms,
                analytics=self._analytics,
                stats=self.stats,
                live=self._live_figures,
                kick=self.kick,
                connections=self._connections,
            )
            self._server = await serve(
                self._handle,
                config.host,
                config.port,
                process_request=self._endpoints.process_request,
                max_size=config.max_message_size,
                ping_interval=config.ping_interval,
                ping_timeout=config.ping_timeout,
                close_timeout=_CLOSE_TIMEOUT,
                # Compression costs a zlib context per connection; y-websocket frames are small.
                compression=None,
                create_connection=connection_class(self._endpoints.plain_request),
            )
        except BaseException:
            await stack.aclose()
            raise
        logger.info("rtc listening on %s", self.http_url)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop accepting, close every peer with 1001, then flush documents and events."""
        if self._server is not None:
            server, self._server = self._server, None
            logger.info("rtc shutting down: closing %d connections", len(self._peers))
            server.close(close_connections=True)
            with anyio.move_on_after(self.config.ping_timeout + 5):
                await server.wait_closed()
            await self._rooms.unload_all()
            self._task_group.cancel_scope.cancel()
        await self._stack.aclose()
        logger.info("rtc stopped")

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the server is not running")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def http_url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        """The base URL a `WebsocketProvider` takes; the room name is `blog_id/post_id`."""
        return f"ws://{self.config.host}:{self.port}/rooms"

    async def flush(self) -> None:
        """Write queued document updates and flush every recorder."""
        await self._store.flush()
        for recorder in self.recorders:
            await recorder.flush()

    def _verify(self, target: RoomRoute) -> Grant | None:
        """The token's grant when tokens are on (raises AuthenticationError, ForbiddenError)."""
        if self.config.secret is None:
            return None
        return verify(target.token, self.config.secret, target.key, now=time.time())

    async def _open_room(self, target: RoomRoute) -> Room:
        """The room, loaded if needed (raises ServerBusyError, RoomUnavailableError)."""
        rooms, limit = self._rooms, self.config.max_rooms
        if limit and rooms.get(target.key) is None and len(rooms) >= limit:
            self.metrics.limit_refusals.labels("rooms").inc()
            raise ServerBusyError(f"{len(rooms)} rooms loaded")
        try:
            return await rooms.acquire(target.key)
        except Exception as error:
            # A store that cannot be read (locked past its timeout, corrupt rows) fails this
            # connection, not the server.
            logger.exception("room %s could not be loaded", target.key)
            raise RoomUnavailableError(str(error)) from error

    def kick(self, key: RoomKey, user_id: int) -> int:
        """Close a user's sessions in a room with 4403 `revoked`; returns how many."""
        room = self._rooms.get(key)
        closed = 0
        for session in room.sessions() if room is not None else ():
            peer = self._peers.get(session.connection)
            if session.user_id == user_id and peer is not None:
                self._close(peer, CloseCode.FORBIDDEN, "revoked")
                closed += 1
        return closed

    # --- WebSockets --------------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        assert isinstance(ws, DeliveringConnection)  # serve(create_connection=...) makes them
        target = self._endpoints.upgrades.pop(ws, None)
        address = address_of(ws)
        self._connections.opened(address)
        try:
            if isinstance(target, FeedRoute):
                await self._serve_feed(ws, target)
            elif isinstance(target, RoomRoute):
                await self._serve_room(ws, target)
        finally:
            self._connections.closed(address)

    async def _serve_feed(self, ws: DeliveringConnection, target: FeedRoute) -> None:
        def deliver(text: str) -> None:
            # A viewer too slow to keep up misses events rather than holding anything back.
            ws.queue(encode(text.encode(), text=True), self.config.outbox_limit)

        ws.attach(lambda data, text: None)  # viewers have nothing to say
        unsubscribe = self.feed.subscribe(target.key, deliver)
        try:
            await ws.wait_closed()
        finally:
            unsubscribe()

    async def _serve_room(self, ws: DeliveringConnection, target: RoomRoute) -> None:
        connection_id = next(self._ids)
        connected_at_ms = _now_ms()
        try:
            grant = self._verify(target)
            room = await self._open_room(target)
        except RtcError as error:
            # Refused before the room: no document, no presence, no session.
            logger.info(
                "connection %d to room %s refused: %s (%s)",
                connection_id,
                target.key,
                error.error_code,
                error.detail,
            )
            self.metrics.closes.labels(str(error.close_code)).inc()
            self._tracking.connection_error(
                target.key,
                connection=connection_id,
                connected_at_ms=connected_at_ms,
                session=None,
                error_code=error.error_code,
                close_code=error.close_code,
            )
            await ws.close(error.close_code, error.reason)
            return
        config = self.config
        peer = _Peer(
            connection_id,
            ws,
            target,
            room,
            connected_at_ms,
            TokenBucket(config.max_messages_per_second, config.message_burst, time.monotonic()),
            grant,
        )
        identity = Identity(grant.user_id, grant.name) if grant is not None else None
        room.open(peer.id, peer.connected_at_ms, identity=identity)
        self._peers[peer.id] = peer
        if grant is not None:
            heapq.heappush(self._expiries, (grant.expires_at, peer.id))
        logger.info("connection %d opened to room %s", peer.id, target.key)
        peer.announce_deadline = asyncio.get_running_loop().call_later(
            config.announce_timeout, self._announce_overdue, peer
        )
        try:
            ws.attach(lambda data, text: self._receive(peer, data, text))
            await ws.wait_closed()
        finally:
            peer.announce_deadline.cancel()
            self._end(peer)

    def _announce_overdue(self, peer: _Peer) -> None:
        if peer.room.session_of(peer.id) is None:
            self._fail(peer, AnnounceTimeoutError())

    def _receive(self, peer: _Peer, data: bytes, text: bool) -> None:
        if peer.close_code is not None:
            return
        try:
            if text:
                self.metrics.received(b"")
                raise UnsupportedDataError("text frame")
            room = peer.room
            if room.is_echo(peer.id, data):  # most of a busy room's traffic: drop it cheaply
                self.metrics.received_echo(len(data), ECHO.what)
                self._charge(peer, _ECHO_COST)
                return
            self.metrics.received(data)
            admitted = room.session_of(peer.id) is not None
            now = _now_ms()
            actions = room.receive(peer.id, decode(data), now)
            self._carry_out(peer, actions)
            self._charge(peer, _ECHO_COST if ECHO in actions else 1.0)
            if not admitted and room.session_of(peer.id) is not None:
                if peer.announce_deadline is not None:
                    peer.announce_deadline.cancel()
                for held in room.take_held(peer.id):
                    self._carry_out(peer, room.receive(peer.id, held, now))
        except RtcError as error:
            self._fail(peer, error)
        except Exception:
            logger.exception("connection %d: message handling failed", peer.id)
            self._fail(peer, RtcError("message handling failed"))

    def _charge(self, peer: _Peer, cost: float) -> None:
        """Take a message's cost from the connection's rate limit (raises RateLimitedError)."""
        if not peer.bucket.take(time.monotonic(), cost):
            self.metrics.limit_refusals.labels("messages").inc()
            raise RateLimitedError(f"over {self.config.max_messages_per_second:g} messages/s")

    def _carry_out(self, peer: _Peer, actions: list[Action]) -> None:
        for action in actions:
            match action:
                case Send(connection=connection, data=data):
                    self._send([connection], data)
                case Broadcast(data=data, to=to):
                    self._send(to, data)
                case Persist(update=update):
                    self._store.append(peer.room.key, update)
                    self._rooms.persisted(peer.room)
                case Joined():
                    logger.info(
                        "connection %d joined room %s as session %d",
                        action.session.connection,
                        action.room,
                        action.session.session_id,
                    )
                    joiner = self._peers.get(action.session.connection, peer)
                    self._tracking.joined(action, post_type=joiner.route.post_type)
                case Blocked():
                    logger.info(
                        "connection %d blocked from room %s (%s limit %d)",
                        action.connection,
                        action.room,
                        action.limit_kind,
                        action.limit,
                    )
                    self._tracking.blocked(action)
                case Left():
                    self._tracking.left(action)
                case Close(connection=connection, code=code, reason=reason):
                    target = self._peers.get(connection)
                    if target is not None:
                        self._close(target, code, reason)
                case Note(what=what):
                    self.metrics.note(what)

    def _send(self, connections: Sequence[int], data: bytes) -> None:
        frame = encode(data)
        sent = 0
        limit = self.config.outbox_limit
        peers = self._peers
        for connection in connections:
            target = peers.get(connection)
            if target is None or target.close_code is not None:
                continue
            if target.ws.queue(frame, limit):
                sent += 1
            else:
                self._close(target, CloseCode.TRY_AGAIN_LATER, "outbox-full")
        if sent:
            self.metrics.sent(data, sent)

    def _fail(self, peer: _Peer, error: RtcError) -> None:
        if peer.error is None and peer.close_code is None:
            peer.error = error
            logger.info("connection %d closed: %s (%s)", peer.id, error.error_code, error.detail)
        self._close(peer, error.close_code, error.reason)

    def _close(self, peer: _Peer, code: int, reason: str) -> None:
        if peer.close_code is not None:
            return
        peer.close_code, peer.close_reason = code, reason
        self._task_group.start_soon(_close_within, peer.ws, code, reason)

    def _end(self, peer: _Peer) -> None:
        """The connection is over: classify how, remove its presence, record what happened."""
        self._peers.pop(peer.id, None)
        room = peer.room
        session = room.session_of(peer.id)
        protocol = peer.ws.protocol
        ending = classify(
            error=peer.error,
            decided=(peer.close_code, peer.close_reason) if peer.close_code is not None else None,
            received=_frame(protocol.close_rcvd),
            sent=_frame(protocol.close_sent),
        )
        error_code, close_code = ending.error_code, ending.close_code
        self.metrics.closes.labels(str(close_code)).inc()
        now = _now_ms()
        self._carry_out(peer, room.close(peer.id, now, clean=ending.clean))
        if error_code is not None:
            self._tracking.connection_error(
                room.key,
                connection=peer.id,
                connected_at_ms=peer.connected_at_ms,
                session=session,
                error_code=error_code,
                close_code=close_code,
            )
        logger.info(
            "connection %d to room %s ended: close %d%s",
            peer.id,
            room.key,
            close_code,
            f" ({error_code})" if error_code else "",
        )
        self._rooms.released(room)

    async def _expire_tokens(self) -> None:
        """Close connections whose token expired (one task for all of them)."""
        while True:
            now = time.time()
            while self._expiries and self._expiries[0][0] <= now:
                _, connection = heapq.heappop(self._expiries)
                peer = self._peers.get(connection)
                if peer is not None:
                    logger.info("connection %d: token expired", connection)
                    self._close(peer, CloseCode.AUTHENTICATION_FAILED, "token-expired")
            delay = self._expiries[0][0] - now if self._expiries else 1.0
            await anyio.sleep(min(max(delay, 0.01), 1.0))

    def _event_store_path(self) -> Path | None:
        """The first SQLite recorder's file: where timelines and stats are read from."""
        for url in self.config.recorder_urls:
            if url.startswith("sqlite://"):
                return locate(url)[1]
        return None

    # --- figures -----------------------------------------------------------------------

    def _live_figures(self) -> LiveFigures:
        rooms = self._rooms.loaded() if hasattr(self, "_rooms") else []
        return LiveFigures(
            connections=len(self._peers),
            rooms=len(rooms),
            sessions=sum(room.session_count for room in rooms),
            contributors=sum(len(room.contributor_ids()) for room in rooms),
        )

    def _recorder_figures(self) -> list[RecorderFigures]:
        figures = []
        for index, recorder in enumerate(self.recorders):
            stats = recorder.stats
            figures.append(
                RecorderFigures(
                    recorder=f"{index}:{recorder.description}",
                    queue_depth=stats.queue_depth,
                    accepted=stats.accepted,
                    written=stats.written,
                    dropped=stats.dropped,
                    retried=stats.retried,
                    spooled=stats.spooled,
                    rejected=stats.rejected,
                    dropped_by_name=dict(stats.dropped_by_name),
                )
            )
        return figures


def _frame(close: CloseFrame | None) -> tuple[int, str] | None:
    return (close.code, close.reason) if close is not None else None
