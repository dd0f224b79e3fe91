"""The composition root: builds every part of a server and owns their one lifecycle.

`RtcServer` is the only place that knows what is wired to what: recorders, the document
store, the rooms, the analytics bridge, the HTTP API and the WebSocket driver. Each part
is built, entered and closed here, in one `async with`, and nowhere else.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Self

import anyio
from websockets.asyncio.server import Server, serve

from rtc.analytics.capture import CaptureSettings
from rtc.analytics.feed import EventFeed
from rtc.analytics.tracking import Tracking
from rtc.config import ServerConfig
from rtc.documents import Documents, open_documents
from rtc.history import SessionHistory
from rtc.http.analytics import AnalyticsApi
from rtc.http.api import HttpApi
from rtc.http.connection import connection_class
from rtc.http.stats import StatsApi
from rtc.limits import RoomLimits
from rtc.metrics import Metrics, live_figures, recorder_figures
from rtc.revocations import Revocations
from rtc.rooms import RoomRegistry
from rtc.server import CLOSE_TIMEOUT, RoomServer
from rtc.tokens import TokenChecker
from tracks import Recorder, open_recorder
from tracks.presence.reading import locate
from tracks.streams import StreamConfig, load_streams
from tracks.urls import can_spool, recorder_kind

if TYPE_CHECKING:
    from rtc.cluster.node import ClusterNode

__all__ = ["RtcServer"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Parts:
    """Everything a running server is made of."""

    recorders: tuple[Recorder, ...]
    documents: Documents
    rooms: RoomRegistry
    driver: RoomServer
    stats: StatsApi
    listener: Server
    cluster: ClusterNode | None


class RtcServer:
    """The room server. Use as `async with RtcServer(config) as server:`.

    Args:
        config: the server configuration.
        recorders: where events go; by default opened from `config.recorder_urls`, entered
            and closed with the server. Recorders passed in are the caller's: enter them
            (`async with`) before the server and close them after it.
        listening: a listening socket to serve on instead of binding `config.host` and
            `config.port` (a worker of `rtc serve --workers`, on its supervisor's socket).
    """

    def __init__(
        self,
        config: ServerConfig,
        *,
        recorders: Sequence[Recorder] | None = None,
        listening: socket.socket | None = None,
    ):
        self.config = config
        self._listening = listening
        self._given_recorders = None if recorders is None else tuple(recorders)
        self._stack = contextlib.AsyncExitStack()
        self._parts: _Parts | None = None

    # --- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._parts is not None:
            raise RuntimeError("the server is already running")
        try:
            self._parts = await self._assemble(self._stack)
        except BaseException:
            await self._stack.aclose()
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
        parts, self._parts = self._parts, None
        if parts is not None:
            logger.info("rtc shutting down: closing %d connections",
                        parts.driver.connections.total)
            parts.listener.close(close_connections=True)
            with anyio.move_on_after(self.config.ping_timeout + 5):
                await parts.listener.wait_closed()
            await parts.driver.settle(within=5)
            await parts.rooms.unload_all()
            if parts.cluster is not None:
                await parts.cluster.leave_cluster()
        await self._stack.aclose()  # background tasks, then documents, then recorders
        logger.info("rtc stopped")

    async def _assemble(self, stack: contextlib.AsyncExitStack) -> _Parts:
        config = self.config
        given = self._given_recorders
        recorders = given if given is not None else await _open_recorders(config, stack)
        streams = (
            load_streams(config.streams)
            if config.streams is not None
            else StreamConfig.default(prefix=config.event_prefix)
        )
        named = {
            name: await stack.enter_async_context(open_recorder(url))
            for name, url in streams.recorder_urls().items()
        }
        documents = await stack.enter_async_context(
            open_documents(config.documents_url, flush_interval=config.store_flush_interval)
        )
        task_group = await stack.enter_async_context(anyio.create_task_group())
        stack.callback(task_group.cancel_scope.cancel)  # runs first on the way out
        every_recorder = (*recorders, *named.values())
        metrics = Metrics(
            lambda: live_figures(rooms.loaded()),
            lambda: recorder_figures(every_recorder),
            documents=lambda: documents.stats,
        )
        feed = EventFeed()
        capture = CaptureSettings(config.data_dir / "capture.json")
        tracking = Tracking(
            recorders,
            feed=feed,
            metrics=metrics,
            prefix=config.event_prefix,
            capture=capture,
            streams=streams,
            named_recorders=named,
        )
        cluster = await _open_cluster(config, stack, tracking=tracking, metrics=metrics)
        rooms = RoomRegistry(
            documents,
            limits=RoomLimits(
                max_contributors=config.max_contributors,
                max_connections=config.max_connections_per_room,
                max_held_bytes=config.max_held_bytes,
                max_held_total=config.max_held_total,
                max_document_size=config.max_document_size,
            ),
            history=SessionHistory(),
            grace=config.room_grace,
            task_group=task_group,
            shared=cluster,
        )
        tokens = _token_check(config)
        driver = RoomServer(
            config,
            tokens=tokens,
            rooms=rooms,
            documents=documents,
            tracking=tracking,
            feed=feed,
            metrics=metrics,
            task_group=task_group,
            cluster=cluster,
        )
        reads = controls = None
        if cluster is not None:
            await cluster.start(task_group)
            from rtc.cluster.controls import SharedControls
            from rtc.cluster.reads import ClusterReads

            reads = ClusterReads(cluster)
            controls = SharedControls(
                config.cluster, cluster.keys, cluster.node_id, capture=capture, feed=feed,
                revocations=tokens.revocations if tokens is not None else None,
                registry=metrics.registry,
            )
            await task_group.start(controls.run)
        event_store = _event_store(config)
        stats = StatsApi(
            event_store=event_store,
            rooms=rooms.loaded,
            rollup_interval=config.rollup_interval,
            retention_days=config.retention_days,
            max_days=config.max_stats_days,
        )
        await task_group.start(stats.run)
        if config.secret is not None:
            await task_group.start(driver.expiry.run)
        api = HttpApi(
            config,
            metrics=metrics,
            rooms=rooms,
            analytics=AnalyticsApi(
                config, tracking=tracking, metrics=metrics, capture=capture,
                event_store=event_store, tokens=tokens, controls=controls,
            ),
            stats=stats,
            live=lambda: live_figures(rooms.loaded()),
            kick=driver.kick,
            connections=driver.connections,
            tokens=tokens,
            cluster=reads,
            controls=controls,
        )
        listener = await serve(
            driver.handle,
            config.host if self._listening is None else None,
            config.port if self._listening is None else None,
            sock=self._listening,
            process_request=api.process_request,
            # Until a connection names its session, a frame may be no larger than what is
            # held for it; the driver lifts this to max_message_size on admission.
            max_size=min(config.max_message_size, config.max_held_bytes),
            ping_interval=config.ping_interval,
            ping_timeout=config.ping_timeout,
            close_timeout=CLOSE_TIMEOUT,
            # Compression costs a zlib context per connection; y-websocket frames are small.
            compression=None,
            create_connection=connection_class(api.plain_request),
        )
        if cluster is not None:
            cluster.address = f"{config.host}:{listener.sockets[0].getsockname()[1]}"
        return _Parts(every_recorder, documents, rooms, driver, stats, listener, cluster)

    # --- what a running server offers --------------------------------------------------

    @property
    def parts(self) -> _Parts:
        if self._parts is None:
            raise RuntimeError("the server is not running: use `async with RtcServer(...)`")
        return self._parts

    @property
    def recorders(self) -> tuple[Recorder, ...]:
        """Every recorder events go to (the default ones and the streams' named ones)."""
        return self.parts.recorders

    @property
    def stats(self) -> StatsApi:
        return self.parts.stats

    @property
    def node_id(self) -> str | None:
        """This node's id in the cluster, None on one node."""
        cluster = self.parts.cluster
        return cluster.node_id if cluster is not None else None

    @property
    def cluster_description(self) -> str:
        cluster = self.parts.cluster
        return cluster.description if cluster is not None else ""

    @property
    def port(self) -> int:
        return int(self.parts.listener.sockets[0].getsockname()[1])

    @property
    def http_url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        """The base URL a `WebsocketProvider` takes; the room name is `blog_id/post_id`."""
        return f"ws://{self.config.host}:{self.port}/rooms"

    async def flush(self) -> None:
        """Write queued document updates and flush every recorder."""
        parts = self.parts
        await parts.documents.flush()
        for recorder in parts.recorders:
            await recorder.flush()


async def _open_recorders(
    config: ServerConfig, stack: contextlib.AsyncExitStack
) -> tuple[Recorder, ...]:
    opened = []
    for index, url in enumerate(config.recorder_urls):
        options: dict[str, object] = {}
        if can_spool(url):
            # A backend outage or a store locked longer than the retries must not
            # lose events: batches wait on disk and are re-sent, oldest first.
            options["spool"] = config.data_dir / "spool" / f"recorder-{index}"
        opened.append(await stack.enter_async_context(open_recorder(url, **options)))
    return tuple(opened)


async def _open_cluster(
    config: ServerConfig,
    stack: contextlib.AsyncExitStack,
    *,
    tracking: Tracking,
    metrics: Metrics,
) -> ClusterNode | None:
    """This node of the cluster (`--cluster`), its Redis client closed with the server; None
    without `--cluster`. Imported here only: one node needs no Redis client installed."""
    if not config.cluster:
        return None
    from redis.asyncio import Redis
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    from rtc.cluster.node import ClusterNode

    # One quick retry, not redis-py's default ten: an outage must be noticed in well under
    # a second, so that new sessions are refused (4503) rather than left waiting.
    redis = Redis.from_url(
        config.cluster,
        socket_connect_timeout=2,
        socket_timeout=5,
        retry=Retry(ExponentialBackoff(cap=0.05, base=0.01), 1),
    )
    stack.push_async_callback(redis.aclose)
    return ClusterNode(
        config, redis, tracking=tracking, registry_metrics=metrics.registry,
        address=f"{config.host}:{config.port}",
    )


def _event_store(config: ServerConfig) -> str | None:
    """The first recorder that has a stats store (a SQLite file or a PostgreSQL database):
    where timelines and stats are read from, as `tracks.open_stats_store` takes it."""
    for url in config.recorder_urls:
        kind = recorder_kind(url)
        if kind == "sqlite":
            return str(locate(url)[1])
        if kind == "postgresql":
            return url
    return None


def _token_check(config: ServerConfig) -> TokenChecker | None:
    """How tokens are checked (lifetime cap, kicks persisted in the data folder), or None
    when tokens are off."""
    if config.secret is None:
        return None
    revocations = Revocations(
        config.data_dir / "revocations.json", keep_seconds=config.max_token_ttl
    )
    return TokenChecker(config.secret, max_ttl=config.max_token_ttl, revocations=revocations)
