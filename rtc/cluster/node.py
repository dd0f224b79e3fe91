"""One cluster node: its Redis connection, shared settings, heartbeat, reaper, availability,
and the seam between the rooms' streams and roster and this node's WebSocket driver.

The driver asks it to admit and release sessions and to share what its rooms decide; it
tells the driver what the other nodes said (`ClusterDriver`). When Redis stops answering,
connected editors carry on with their node's peers and new sessions are refused
(`ClusterUnavailableError`); when it answers again, the node re-registers its sessions and
resynchronises its rooms, or, if the others reaped it meanwhile, closes its connections so
that they come back and are admitted again.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import anyio
from anyio.abc import TaskGroup
from redis.asyncio import Redis
from redis.exceptions import RedisError

from rtc.actions import Left, Reserve, Session
from rtc.analytics.tracking import RECONNECT_WINDOW_MS, Tracking
from rtc.cluster.entries import Entry
from rtc.cluster.keys import Keys
from rtc.cluster.metrics import ClusterFigures, ClusterMetrics
from rtc.cluster.outcomes import Heartbeat, Reaped, Registration
from rtc.cluster.registry import Registry
from rtc.cluster.streams import RoomStreams
from rtc.config import ConfigError, ServerConfig
from rtc.decisions import Decision
from rtc.errors import CloseCode
from rtc.ids import RoomKey
from tracks.event import now_ms

__all__ = ["ClusterDriver", "ClusterNode", "default_node_id", "shared_settings"]

logger = logging.getLogger(__name__)

# How a lost node's connections are recorded (jetpack_rtc_connection_error).
NODE_LOST = "node-lost"
# A session ended with a blocked refusal is remembered this long, cluster-wide.
BLOCKED_MEMORY_MS = 60 * 60_000
# A session's end is remembered this long (to flag its reconnect), cluster-wide.
ENDS_MEMORY_MS = 24 * 3600_000
_ERRORS = (RedisError, OSError, TimeoutError)


def default_node_id() -> str:
    """A unique, readable id per process: host, pid and a random suffix."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def shared_settings(config: ServerConfig) -> dict[str, str]:
    """The settings every node of a cluster must agree on, as Redis stores them."""
    return {
        "max_contributors": str(config.max_contributors),
        "max_connections_per_room": str(config.max_connections_per_room),
        "max_document_size": str(config.max_document_size),
        "event_prefix": config.event_prefix,
        "reconnect_window_ms": str(RECONNECT_WINDOW_MS),
        "node_timeout": repr(float(config.node_timeout)),
    }


class ClusterDriver(Protocol):
    """What the node needs from this node's WebSocket driver."""

    def remote(self, key: RoomKey, entry: Entry) -> None:
        """Another node said something about a room this node holds."""

    def state_vector(self, key: RoomKey) -> bytes | None:
        """A loaded room's state vector (None: not loaded)."""

    def presence(self, key: RoomKey) -> bytes | None:
        """A loaded room's local presence, an awareness update (None: no local session)."""

    def registrations(self) -> list[tuple[RoomKey, Registration]]:
        """This node's admitted sessions, as the cluster should know them."""

    def close_all(self, code: int, reason: str) -> None:
        """Close every room connection without recording their ends (already recorded)."""


class ClusterNode:
    """A node of the cluster. Build with `ClusterNode.open(...)` inside the server's stack,
    then `attach(driver)` and `await start(task_group)`.
    """

    def __init__(
        self,
        config: ServerConfig,
        redis: Redis,
        *,
        tracking: Tracking,
        registry_metrics: Any,
        address: str,
    ) -> None:
        self.config = config
        self.node_id = config.node_id or default_node_id()
        self.keys = Keys()
        self._redis = redis
        self._tracking = tracking
        self.address = address
        self.registry = Registry(redis, self.keys, self.node_id)
        # A room held by this node alone (the balancer hashed its clients here) costs Redis
        # nothing per edit: see RoomStreams' "Alone".
        self.streams = RoomStreams(
            redis, self.keys, self.node_id, deliver=self._deliver, resync=self.resync,
            share_alone=False, joined=self._joined,
        )
        self.metrics = ClusterMetrics(registry_metrics, self._figures)
        self.available = False
        self.nodes_alive = 0
        self._driver: ClusterDriver | None = None
        self._started_at = now_ms()
        timeout = config.node_timeout
        self._beat_every = timeout / 5
        # A node is taken for dead after missing four beats, so that one reaper tick later
        # (at most) its sessions are gone: within `node_timeout` of its last beat.
        self._dead_after_ms = int(timeout * 1000 * 4 / 5)

    @property
    def description(self) -> str:
        kwargs = self._redis.connection_pool.connection_kwargs
        return f"redis://{kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)}"

    def attach(self, driver: ClusterDriver) -> None:
        self._driver = driver

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self, task_group: TaskGroup) -> None:
        """Join the cluster: check the shared settings, first heartbeat, then run the
        heartbeat, the reaper and the streams in `task_group`.

        Raises:
            ConfigError: a setting differs from the cluster's (the message names it).
            OSError: Redis cannot be reached at start.
        """
        try:
            differing = await self.registry.check_settings(
                shared_settings(self.config), node_timeout_ms=self._dead_after_ms
            )
            if differing is not None:
                raise ConfigError(
                    f"--{differing.replace('_', '-')} differs from the cluster's setting "
                    f"(recorded in Redis by the first node): refusing to start"
                )
            beat = await self._beat(joining=True)
        except _ERRORS as error:
            raise OSError(f"cluster Redis {self.description} unreachable: {error}") from error
        self.nodes_alive = beat.alive
        self._set_available(True)
        await task_group.start(self.streams.run)
        task_group.start_soon(self._heartbeats)
        task_group.start_soon(self._reaper)
        logger.info("cluster node %s joined (%d nodes alive)", self.node_id, beat.alive)

    async def leave_cluster(self) -> None:
        """At shutdown (after every connection ended): forget this node."""
        try:
            with anyio.fail_after(2):
                await self.registry.forget_node()
        except (*_ERRORS, anyio.get_cancelled_exc_class()):  # pragma: no cover - best effort
            logger.info("cluster node %s could not deregister; it will be reaped", self.node_id)

    # --- what the driver asks ------------------------------------------------------------

    async def admit(self, key: RoomKey, reserve: Reserve, *, max_contributors: int,
                    max_connections: int) -> Decision | None:
        """The cluster's decision on a newcomer; None while Redis does not answer."""
        if not self.available:
            self.metrics.admissions.labels("unavailable").inc()
            return None
        started = time.perf_counter()
        try:
            decision = await self.registry.admit(
                key,
                conn=reserve.connection,
                session_id=reserve.session_id,
                user_id=reserve.user_id,
                name=reserve.name,
                connected_at_ms=reserve.connected_at_ms,
                now_ms=reserve.now_ms,
                max_contributors=max_contributors,
                max_connections=max_connections,
                blocked_memory_ms=BLOCKED_MEMORY_MS,
                ends_memory_ms=ENDS_MEMORY_MS,
            )
        except _ERRORS as error:
            self._lost(error)
            self.metrics.admissions.labels("unavailable").inc()
            return None
        self.metrics.redis_rtt.observe(time.perf_counter() - started)
        self.metrics.admissions.labels(type(decision).__name__.lower()).inc()
        return decision

    async def leave(self, left: Left, *, clock: int | None) -> str | None:
        """Release a session's registration: "left", "replaced", "gone" (reaped already:
        nothing to record), or None while Redis does not answer (recorded now, reconciled
        when it is back)."""
        if not self.available:
            return None
        try:
            return await self.registry.leave(
                left.room,
                conn=left.session.connection,
                session_id=left.session.session_id,
                ended_at_ms=left.ended_at_ms,
                abnormal=not left.clean,
                clock=clock,
                ends_memory_ms=ENDS_MEMORY_MS,
            )
        except _ERRORS as error:
            self._lost(error)
            return None

    def share(self, key: RoomKey, kind: str, data: bytes, target: str | None = None) -> None:
        self.streams.publish(key, kind, data, target)

    async def follow(self, key: RoomKey) -> None:
        """Before a room's document is loaded: read its stream from now on."""
        await self.streams.follow(key)  # never raises: followed from Redis's return if down

    def loaded(self, key: RoomKey) -> None:
        """A room was loaded: ask the nodes that hold it for what its store lacked."""
        self.resync(key)

    def unfollow(self, key: RoomKey) -> None:
        self.streams.unfollow(key)

    def resync(self, key: RoomKey) -> None:
        """Ask every node holding the room for what this node lacks (and its presence)."""
        vector = self._driver.state_vector(key) if self._driver is not None else None
        if vector is not None:
            self.metrics.resyncs.inc()
            self.streams.publish(key, "sync", vector, None)

    # --- internals -----------------------------------------------------------------------

    def _deliver(self, key: RoomKey, entry: Entry) -> None:
        if self._driver is not None:
            self._driver.remote(key, entry)

    def _joined(self, key: RoomKey) -> None:
        """Another node holds the room too: it may not know this node's clients yet."""
        presence = self._driver.presence(key) if self._driver is not None else None
        if presence is not None:
            self.streams.publish(key, "awareness", presence, None)

    def _figures(self) -> ClusterFigures:
        s = self.streams
        return ClusterFigures(
            available=self.available,
            nodes_alive=self.nodes_alive,
            lag_ms=s.lag_ms(),
            entries_read=s.entries_read,
            entries_published=s.entries_published,
            entries_dropped=s.entries_dropped,
            entries_malformed=s.malformed,
        )

    def _info(self) -> Mapping[str, str]:
        return {"address": self.address, "started_at": str(self._started_at)}

    async def _beat(self, *, joining: bool) -> Heartbeat:
        return await self.registry.heartbeat(
            self._info(), joining=joining, node_timeout_ms=self._dead_after_ms
        )

    def _set_available(self, available: bool) -> None:
        if available != self.available:
            self.available = available
            self.metrics.transitions.labels("available" if available else "unavailable").inc()

    def _lost(self, error: BaseException) -> None:
        if self.available:
            logger.warning(
                "cluster: Redis %s stopped answering (%s): editing goes on on this node, "
                "new sessions are refused (4503 cluster-unavailable) until it is back",
                self.description, error,
            )
        self._set_available(False)

    async def _heartbeats(self) -> None:
        while True:
            await anyio.sleep(self._beat_every)
            started = time.perf_counter()
            try:
                with anyio.fail_after(max(self._beat_every, 1.0)):
                    await self._heartbeat()
            except (*_ERRORS, TimeoutError) as error:
                self._lost(error)
                continue
            self.metrics.redis_rtt.observe(time.perf_counter() - started)

    async def _heartbeat(self) -> None:
        """One heartbeat, and what it reveals: this node was reaped (it was paused or cut
        off), or Redis lost its registrations (it restarted empty), or it is back after an
        outage: each calls for re-joining."""
        beat = await self._beat(joining=False)
        if beat.reaped:
            self._was_reaped()
            beat = await self._beat(joining=True)
        elif beat.missing or not self.available:
            lost = beat.missing
            # Sessions that ended meanwhile were recorded then; what is registered is made
            # to match what is connected here, without limits (nobody present is evicted).
            registrations = self._driver.registrations() if self._driver is not None else []
            await self.registry.register_all(registrations)
            beat = await self._beat(joining=True)
            # The streams resynchronise every followed room themselves when Redis is back.
            logger.warning(
                "cluster: Redis %s answers again%s: %d session(s) re-registered, rooms "
                "resynchronising",
                self.description,
                " (it had lost this node's registrations)" if lost else "",
                len(registrations),
            )
        self.nodes_alive = beat.alive
        self._set_available(True)

    def _was_reaped(self) -> None:
        logger.warning(
            "cluster node %s was taken for dead by the others (paused or partitioned): "
            "closing its connections so that they are admitted again", self.node_id,
        )
        if self._driver is not None:
            self._driver.close_all(CloseCode.SERVER_BUSY, NODE_LOST)

    async def _reaper(self) -> None:
        while True:
            await anyio.sleep(self._beat_every)
            if not self.available:
                continue
            try:
                with anyio.fail_after(5):
                    reaped = await self.registry.reap(
                        node_timeout_ms=self._dead_after_ms, ends_memory_ms=ENDS_MEMORY_MS
                    )
            except (*_ERRORS, TimeoutError) as error:
                self._lost(error)
                continue
            if reaped:
                self._record_reaped(reaped)

    def _record_reaped(self, reaped: Sequence[Reaped]) -> None:
        nodes = {item.registration.node for item in reaped}
        self.metrics.nodes_reaped.inc(len(nodes))
        self.metrics.reaped.inc(len(reaped))
        logger.warning(
            "cluster: node(s) %s stopped heartbeating: reaped %d session(s)",
            ", ".join(sorted(nodes)), len(reaped),
        )
        ended = now_ms()
        for item in reaped:
            reg = item.registration
            if item.removed and self._driver is not None:
                # The others hear it from the room's stream; this node skips its own entries.
                gone = Entry(self.node_id, "gone", str(reg.session_id).encode(), None)
                self._driver.remote(item.key, gone)
            session = Session(
                connection=reg.conn,
                session_id=reg.session_id,
                user_id=reg.user_id,
                name=reg.name,
                connected_at_ms=reg.connected_at_ms,
                joined_at_ms=reg.joined_at_ms,
            )
            self._tracking.left(Left(item.key, session, ended, clean=False))
            self._tracking.connection_error(
                item.key,
                connection=reg.conn,
                connected_at_ms=reg.connected_at_ms,
                session=session,
                error_code=NODE_LOST,
                close_code=CloseCode.ABNORMAL_CLOSURE,
            )
