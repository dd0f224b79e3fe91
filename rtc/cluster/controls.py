"""What the nodes of a cluster share besides rooms: kicks, capture control and the live feed.

- Kicks: the sorted set ``{prefix}:revocations`` (member ``"blog:post:user"``, score the
  second of the kick), pruned of kicks older than the longest token lifetime at each kick.
  A token kicked on one node is refused on every node (`rtc.revocations.Revocations.share`).
- Capture control: the hash `Keys.capture` (blog id -> settings JSON), instead of each node's
  ``capture.json``.
- Each change of either bumps ``{prefix}:controls:version`` in the same transaction and is
  announced on the channel ``{prefix}:controls``. Every node reloads both on an announcement,
  and whenever the version it polls (every `refresh` seconds) moved: an announcement lost
  while its subscriber reconnected is caught within a second.
- The live feed: each event recorded on a node is published on its room's channel
  ``{prefix}:{blog:post}:events`` as ``"node:json"``; a node subscribes to the rooms it has
  viewers of, while it has any, and skips its own messages. Pub/sub loses what is published
  while a subscriber reconnects, which a live view can afford (the events themselves are in
  the shared store). Publishing never blocks a room: a bounded queue, drops counted.

One task (`run`) owns the Redis client, its subscription and its publisher.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from typing import Any

import anyio
from anyio.abc import TaskStatus
from prometheus_client import CollectorRegistry, Counter
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from rtc.analytics.capture import BlogCapture, CaptureSettings
from rtc.analytics.feed import EventFeed
from rtc.cluster.keys import Keys
from rtc.errors import ClusterUnavailableError
from rtc.ids import RoomKey, id_from_text
from rtc.revocations import Revocations

__all__ = ["SharedControls", "feed_channel", "parse_kicks"]

logger = logging.getLogger(__name__)

_ERRORS = (RedisError, OSError, TimeoutError)
TICK = 0.05
"""Seconds the subscriber waits for a message before it looks at what changed here (rooms
watched or no longer watched): how late a new viewer's subscription may start."""
PUBLISH_BATCH = 500
"""Feed events published in one pipelined round trip, at most."""


def feed_channel(keys: Keys, key: RoomKey) -> str:
    """The pub/sub channel of a room's live feed."""
    return f"{keys.prefix}:{{{key.blog_id}:{key.post_id}}}:events"


def parse_kicks(
    entries: list[tuple[Any, float]], *, since: float
) -> dict[tuple[RoomKey, int], int]:
    """The kicks of a ``ZRANGE … WITHSCORES`` reply, those at or after `since` (seconds);
    malformed members are skipped."""
    kicks: dict[tuple[RoomKey, int], int] = {}
    for member, score in entries:
        text = member.decode() if isinstance(member, bytes) else str(member)
        parts = [id_from_text(part) for part in text.split(":")]
        ids = [part for part in parts if part is not None]
        if len(parts) != 3 or len(ids) != 3 or score < since:
            continue
        blog_id, post_id, user_id = ids
        kicks[RoomKey(blog_id, post_id), user_id] = int(score)
    return kicks


class SharedControls:
    """This node's side of the shared kicks, capture control and live feed.

    Args:
        url: the cluster's Redis (``--cluster``).
        keys: the key names.
        node_id: this node (its own feed messages are skipped).
        capture: the capture settings every recorded event is checked against; kept current.
        feed: the live feed; its events are relayed, the other nodes' delivered to it.
        revocations: the kicks tokens are checked against (None: tokens are off).
        registry: where the counters are registered (None: not exposed).
        refresh: seconds between version polls (a change is seen at most this late).
        max_pending: feed events waiting to be published; more are dropped and counted.
    """

    def __init__(
        self,
        url: str,
        keys: Keys,
        node_id: str,
        *,
        capture: CaptureSettings,
        feed: EventFeed,
        revocations: Revocations | None,
        registry: CollectorRegistry | None = None,
        refresh: float = 1.0,
        max_pending: int = 10_000,
    ) -> None:
        if not refresh > 0 or max_pending < 1:
            raise ValueError("refresh must be > 0 and max_pending >= 1")
        self._url = url
        self._keys = keys
        self._node = node_id
        self._capture = capture
        self._feed = feed
        self._revocations = revocations
        self._refresh = refresh
        self._max_pending = max_pending
        self._redis: Redis | None = None
        self._version: bytes | None = None
        self._reloading = anyio.Lock()
        self._pending: deque[tuple[str, str]] = deque()
        self._wake = anyio.Event()
        self._watched: set[RoomKey] = set()
        self._channels: dict[str, RoomKey] = {}
        self._healthy = True
        self._reloaded = anyio.Event()
        counters = (
            Counter(
                "rtc_cluster_feed_events",
                "Live feed events shared with the other nodes, by outcome "
                "(published, received, dropped).",
                ["outcome"],
                registry=registry,
            ),
            Counter(
                "rtc_cluster_control_reloads",
                "Reloads of the shared kicks and capture settings.",
                registry=registry,
            ),
            Counter(
                "rtc_cluster_control_errors",
                "Redis errors of the shared controls and the feed relay.",
                registry=registry,
            ),
        )
        self._feed_events, self._reloads, self._errors = counters

    @property
    def capture(self) -> CaptureSettings:
        return self._capture

    @property
    def revocations(self) -> Revocations | None:
        return self._revocations

    @property
    def watched(self) -> set[RoomKey]:
        """The rooms this node has feed viewers of."""
        return set(self._watched)

    async def reloaded(self) -> None:
        """Wait for the next reload of the shared settings (tests wait on it)."""
        await self._reloaded.wait()

    @property
    def _control_channel(self) -> str:
        return f"{self._keys.prefix}:controls"

    @property
    def _version_key(self) -> str:
        return f"{self._keys.prefix}:controls:version"

    @property
    def _kicks_key(self) -> str:
        return f"{self._keys.prefix}:revocations"

    # --- lifecycle -----------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Load the shared settings, then keep them current and relay the feed until
        cancelled. Started once the first load was tried (a Redis outage then is logged;
        the node serves and catches up when Redis answers)."""
        async with Redis.from_url(
            self._url, socket_connect_timeout=2, socket_timeout=5
        ) as redis:
            self._redis = redis
            try:
                with anyio.fail_after(5):
                    await self._reload()
            except _ERRORS as error:
                self._failed(error)
            self._feed.attach(self)
            task_status.started()
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._publisher)
                await self._subscriber()

    # --- changes made on this node -------------------------------------------------------

    async def set_capture(self, blog_id: int, capture: BlogCapture) -> None:
        """Change a blog's capture settings for the whole cluster; applied here before it
        returns, on the other nodes within a second (at once when the announcement arrives).

        Raises:
            ClusterUnavailableError: Redis did not take it (nothing changed).
        """
        redis = self._client()
        try:
            with anyio.fail_after(5):
                async with redis.pipeline(transaction=True) as pipe:
                    if capture == BlogCapture():
                        pipe.hdel(self._keys.capture, str(blog_id))
                    else:
                        pipe.hset(self._keys.capture, str(blog_id), json.dumps(capture.to_json()))
                    pipe.incr(self._version_key)
                    pipe.publish(self._control_channel, "capture")
                    await pipe.execute()
                await self._reload()
        except _ERRORS as error:
            self._failed(error)
            raise ClusterUnavailableError("capture settings not changed") from None
        logger.info("capture for blog %d (cluster-wide): %s", blog_id, capture.to_json())

    async def revoke(self, key: RoomKey, user_id: int, at: int) -> None:
        """Share a kick (the user's tokens for the room issued up to second `at` are refused
        on every node), applied here before it returns.

        Raises:
            ClusterUnavailableError: Redis did not take it.
        """
        redis = self._client()
        keep = self._revocations.keep_seconds if self._revocations is not None else 86400.0
        member = f"{key.blog_id}:{key.post_id}:{user_id}"
        try:
            with anyio.fail_after(5):
                async with redis.pipeline(transaction=True) as pipe:
                    pipe.zadd(self._kicks_key, {member: at}, gt=True)
                    pipe.zremrangebyscore(self._kicks_key, "-inf", f"({at - keep}")
                    # The set vanishes once no token it could refuse is alive.
                    pipe.expire(self._kicks_key, int(keep) + 60)
                    pipe.incr(self._version_key)
                    pipe.publish(self._control_channel, "revocations")
                    await pipe.execute()
                await self._reload()
        except _ERRORS as error:
            self._failed(error)
            raise ClusterUnavailableError("kick not shared with the other nodes") from None

    # --- the feed relay (rtc.analytics.feed.FeedRelay) -----------------------------------

    def relay(self, room: RoomKey, text: str) -> None:
        if len(self._pending) >= self._max_pending:
            self._feed_events.labels("dropped").inc()
            return
        self._pending.append((feed_channel(self._keys, room), f"{self._node}:{text}"))
        self._wake.set()

    def watch(self, room: RoomKey, watching: bool) -> None:
        if watching:
            self._watched.add(room)
        else:
            self._watched.discard(room)

    # --- internals -----------------------------------------------------------------------

    def _client(self) -> Redis:
        if self._redis is None:
            raise ClusterUnavailableError("the shared controls are not running")
        return self._redis

    def _failed(self, error: BaseException) -> None:
        self._errors.inc()
        if self._healthy:
            logger.warning(
                "cluster controls: Redis does not answer (%s): kicks and capture changes of "
                "other nodes are applied here when it is back", error or type(error).__name__,
            )
        self._healthy = False

    async def _reload(self) -> None:
        """Read the kicks and capture settings, and take them as current."""
        redis = self._client()
        # One at a time: a reload begun before a change here must not land after it.
        async with self._reloading:
            async with redis.pipeline(transaction=True) as pipe:
                pipe.get(self._version_key)
                pipe.hgetall(self._keys.capture)
                pipe.zrange(self._kicks_key, 0, -1, withscores=True)
                pipe.time()
                version, captures, kicks, (seconds, _) = await pipe.execute()
            blogs = {}
            for blog, raw in captures.items():
                blog_id = id_from_text(blog.decode() if isinstance(blog, bytes) else str(blog))
                try:
                    if blog_id is None:
                        raise ValueError("bad blog id")
                    text = raw.decode() if isinstance(raw, bytes) else str(raw)
                    blogs[blog_id] = CaptureSettings.parse(text)
                except ValueError:
                    logger.warning("cluster controls: skipping malformed capture entry %r", blog)
            self._capture.replace(blogs)
            if self._revocations is not None:
                since = int(seconds) - self._revocations.keep_seconds
                self._revocations.share(parse_kicks(kicks, since=since))
            self._version = version
        self._reloads.inc()
        if not self._healthy:
            logger.warning("cluster controls: Redis answers again; shared settings reloaded")
        self._healthy = True
        self._reloaded.set()
        self._reloaded = anyio.Event()

    async def _subscriber(self) -> None:
        """Listen to announcements and watched rooms' feeds; on an error, start over."""
        while True:
            try:
                await self._listen()
            except _ERRORS as error:
                self._failed(error)
            await anyio.sleep(self._refresh)  # before trying Redis again

    async def _listen(self) -> None:
        pubsub: PubSub = self._client().pubsub(ignore_subscribe_messages=True)
        try:
            with anyio.fail_after(5):
                await pubsub.subscribe(self._control_channel)
                subscribed: set[RoomKey] = set()
                await self._reload()  # after subscribing: nothing falls in between
            polled = anyio.current_time()
            while True:  # until an error or cancellation
                subscribed = await self._follow_watched(pubsub, subscribed)
                message = await pubsub.get_message(timeout=TICK)
                while message is not None:
                    await self._received(message)
                    message = await pubsub.get_message(timeout=0)
                if anyio.current_time() - polled >= self._refresh:
                    polled = anyio.current_time()
                    with anyio.fail_after(5):
                        if await self._client().get(self._version_key) != self._version:
                            await self._reload()
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _follow_watched(self, pubsub: PubSub, subscribed: set[RoomKey]) -> set[RoomKey]:
        watched = set(self._watched)
        added, removed = watched - subscribed, subscribed - watched
        if added:
            channels = [feed_channel(self._keys, key) for key in added]
            for channel, key in zip(channels, added, strict=True):
                self._channels[channel] = key
            await pubsub.subscribe(*channels)
        if removed:
            channels = [feed_channel(self._keys, key) for key in removed]
            for channel in channels:
                self._channels.pop(channel, None)
            await pubsub.unsubscribe(*channels)
        return watched

    async def _received(self, message: dict[str, Any]) -> None:
        if message.get("type") != "message":
            return
        channel = message["channel"]
        channel = channel.decode() if isinstance(channel, bytes) else str(channel)
        if channel == self._control_channel:
            with anyio.fail_after(5):
                await self._reload()
            return
        key = self._channels.get(channel)
        data = message["data"]
        text = data.decode() if isinstance(data, bytes) else str(data)
        node, _, event = text.partition(":")
        if key is None or node == self._node or not event:
            return
        self._feed_events.labels("received").inc()
        self._feed.receive(key, event)

    async def _publisher(self) -> None:
        """Publish this node's feed events in pipelined batches; lost while Redis is down."""
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            while self._pending:
                batch = [
                    self._pending.popleft()
                    for _ in range(min(len(self._pending), PUBLISH_BATCH))
                ]
                try:
                    with anyio.fail_after(5):
                        async with self._client().pipeline(transaction=False) as pipe:
                            for channel, message in batch:
                                pipe.publish(channel, message)
                            await pipe.execute()
                except _ERRORS as error:
                    self._failed(error)
                    self._feed_events.labels("dropped").inc(len(batch))
                    continue
                self._feed_events.labels("published").inc(len(batch))
