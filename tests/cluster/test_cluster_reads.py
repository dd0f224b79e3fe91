"""Cluster-wide reads and controls (issue 14, item 6): rosters, live stats and the health
check from every node; kicks, capture control and the live feed shared through Redis.

The pure JSON first, then the shared controls of two in-process nodes on a real
redis-server, then three real `rtc serve --cluster` nodes."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from redis.asyncio import Redis

from rtc.analytics.capture import BlogCapture, CaptureSettings
from rtc.analytics.feed import EventFeed
from rtc.auth import issue, issue_scoped
from rtc.cluster.controls import SharedControls, feed_channel, parse_kicks
from rtc.cluster.keys import Keys
from rtc.cluster.outcomes import Registration
from rtc.http.roster import cluster_room_json, cluster_rooms_json
from rtc.http.stats import cluster_live_json
from rtc.ids import RoomKey
from rtc.revocations import Revocations
from tests.cluster.harness import cluster_nodes, events
from tests.postgresql_fixtures import postgres_url  # noqa: F401
from tests.redis_fixtures import ThrowawayRedis, redis_server  # noqa: F401
from tests.rtc.clients import TIMEOUT, RawClient
from tests.rtc.processes import ServerProcess

ROOM = RoomKey(7, 42)
SECRET = "correct horse battery staple, 32+ bytes long"


def _registration(node: str, session_id: int, user_id: int | None, joined: int) -> Registration:
    name = None if user_id is None else f"User {user_id}"
    return Registration(node, session_id * 10, session_id, user_id, name, joined - 5, joined)


# --- the JSON, pure ------------------------------------------------------------------------


def test_a_cluster_roster_has_the_one_node_shape_plus_each_sessions_node() -> None:
    sessions = [
        _registration("node2", 3, 2, 300),
        _registration("node1", 1, 2, 100),
        _registration("node3", 9, None, 50),
        _registration("node1", 4, 1, 400),
    ]
    assert cluster_room_json(ROOM, sessions) == {
        "blog_id": 7, "post_id": 42, "loaded": True, "session_count": 4,
        "contributor_count": 2,
        "contributors": [
            {"id": 1, "name": "User 1", "sessions": [
                {"session_id": 4, "connected_since": 395, "node": "node1"}]},
            {"id": 2, "name": "User 2", "sessions": [
                {"session_id": 1, "connected_since": 95, "node": "node1"},
                {"session_id": 3, "connected_since": 295, "node": "node2"}]},
            {"sessions": [{"session_id": 9, "connected_since": 45, "node": "node3"}]},
        ],
    }
    assert cluster_room_json(ROOM, []) == {
        "blog_id": 7, "post_id": 42, "loaded": False, "session_count": 0,
        "contributor_count": 0, "contributors": [],
    }


def test_cluster_room_lists_and_live_stats_count_every_nodes_sessions() -> None:
    rooms = {
        RoomKey(8, 1): [_registration("node2", 5, 3, 10)],
        ROOM: [_registration("node1", 1, 1, 1), _registration("node2", 2, 1, 2),
               _registration("node3", 3, None, 3)],
    }
    assert cluster_rooms_json(rooms) == {"rooms": [
        {"blog_id": 7, "post_id": 42, "session_count": 3, "contributor_count": 1},
        {"blog_id": 8, "post_id": 1, "session_count": 1, "contributor_count": 1},
    ]}
    assert cluster_live_json(rooms) == {
        "active_sessions": 4, "active_contributors": 2,
        "rooms": [{"blog_id": 7, "post_id": 42, "sessions": 3, "contributors": 1},
                  {"blog_id": 8, "post_id": 1, "sessions": 1, "contributors": 1}],
    }
    assert cluster_live_json(rooms, blog_id=8)["active_sessions"] == 1


def test_kicks_read_from_redis_skip_the_old_and_the_malformed() -> None:
    entries: list[tuple[Any, float]] = [
        (b"7:42:101", 1000.0), (b"7:42:102", 10.0), (b"7:x:1", 1000.0), ("1:2", 1000.0),
    ]
    assert parse_kicks(entries, since=500) == {(ROOM, 101): 1000}


class _Relay:
    def __init__(self) -> None:
        self.relayed: list[tuple[RoomKey, str]] = []
        self.watching: list[tuple[RoomKey, bool]] = []

    def relay(self, room: RoomKey, text: str) -> None:
        self.relayed.append((room, text))

    def watch(self, room: RoomKey, watching: bool) -> None:
        self.watching.append((room, watching))


def test_the_feed_relays_its_own_events_and_says_which_rooms_are_watched() -> None:
    feed, relay = EventFeed(), _Relay()
    feed.attach(relay)
    seen: list[str] = []
    first = feed.subscribe(ROOM, seen.append)
    second = feed.subscribe(ROOM, seen.append)
    feed.publish(ROOM, {"name": "here"})
    feed.receive(ROOM, '{"name":"there"}')  # from another node: delivered, not relayed back
    first()
    first()  # twice is once
    assert relay.watching == [(ROOM, True)]
    second()
    assert relay.watching == [(ROOM, True), (ROOM, False)]
    assert relay.relayed == [(ROOM, '{"name":"here"}')]
    assert seen == ['{"name":"here"}'] * 2 + ['{"name":"there"}'] * 2


# --- the shared controls of two nodes on one real Redis ----------------------------------


@asynccontextmanager
async def _controls(
    redis_url: str, node: str, data_dir: Path
) -> AsyncIterator[tuple[SharedControls, EventFeed]]:
    feed = EventFeed()
    controls = SharedControls(
        redis_url, Keys(), node, capture=CaptureSettings(data_dir / f"{node}.json"),
        feed=feed, revocations=Revocations(data_dir / f"{node}-kicks.json", keep_seconds=600),
        refresh=0.2,
    )
    async with anyio.create_task_group() as tg:
        await tg.start(controls.run)
        yield controls, feed
        tg.cancel_scope.cancel()


async def _until(controls: SharedControls, done: Callable[[], bool]) -> None:
    """Wait for the reload after which `done()` holds."""
    with anyio.fail_after(TIMEOUT):
        while not done():  # bounded by the timeout
            await controls.reloaded()


async def test_capture_and_kicks_changed_on_one_node_hold_on_the_other(
    tmp_path: Path, redis_server: ThrowawayRedis  # noqa: F811
) -> None:
    async with (
        _controls(redis_server.url, "a", tmp_path) as (a, _),
        _controls(redis_server.url, "b", tmp_path) as (b, _),
    ):
        off = BlogCapture(enabled=False)
        await a.set_capture(7, off)
        assert a.capture.for_blog(7) == off  # applied where it was made before it returns
        await _until(b, lambda: b.capture.for_blog(7) == off)
        assert b.capture.to_json() == {"7": {"enabled": False, "sample_rate": 1.0}}
        await b.set_capture(7, BlogCapture())  # the default again: the entry goes
        await _until(a, lambda: a.capture.for_blog(7) == BlogCapture())
        assert not (tmp_path / "a.json").exists()  # Redis keeps them, not the node's file

        revocations = b.revocations
        assert revocations is not None
        now = int(time.time())
        await a.revoke(ROOM, 101, now)
        await _until(b, lambda: revocations.revoked_at(ROOM, 101) == now)
        assert revocations.revoked_at(RoomKey(7, 43), 101) is None


async def test_a_lost_announcement_is_caught_by_the_version_poll(
    tmp_path: Path, redis_server: ThrowawayRedis  # noqa: F811
) -> None:
    async with (
        _controls(redis_server.url, "a", tmp_path) as (a, _),
        Redis.from_url(redis_server.url) as redis,
    ):
        # Another node's change whose announcement never arrived.
        await redis.hset("rtc:capture", "9", json.dumps({"enabled": False, "sample_rate": 1}))
        await redis.incr("rtc:controls:version")
        await _until(a, lambda: not a.capture.for_blog(9).enabled)


async def test_a_viewer_on_one_node_sees_the_events_of_another(
    tmp_path: Path, redis_server: ThrowawayRedis  # noqa: F811
) -> None:
    async with (
        _controls(redis_server.url, "a", tmp_path) as (a, feed_a),
        _controls(redis_server.url, "b", tmp_path) as (_, feed_b),
        Redis.from_url(redis_server.url) as redis,
    ):
        seen: list[str] = []
        arrived = anyio.Event()

        def deliver(text: str) -> None:
            seen.append(text)
            arrived.set()

        unsubscribe = feed_a.subscribe(ROOM, deliver)
        await _subscribers(redis, feed_channel(Keys(), ROOM), 1)
        feed_b.publish(ROOM, {"name": "join", "props": {"session_id": 5}})
        feed_a.publish(ROOM, {"name": "own"})  # its own: delivered once, not echoed back
        with anyio.fail_after(TIMEOUT):
            await arrived.wait()
            while len(seen) < 2:  # bounded by the timeout
                arrived = anyio.Event()
                await arrived.wait()
        assert sorted(seen) == ['{"name":"join","props":{"session_id":5}}', '{"name":"own"}']
        unsubscribe()
        await _subscribers(redis, feed_channel(Keys(), ROOM), 0)
        assert a.watched == set()


async def _subscribers(redis: Redis, channel: str, count: int) -> None:
    """Wait until `count` clients subscribe to `channel` (another connection's state)."""
    with anyio.fail_after(TIMEOUT):
        while True:  # bounded by the timeout
            if dict(await redis.pubsub_numsub(channel)).get(channel.encode(), 0) == count:
                return
            # A subscription is another connection's state: only Redis can tell.
            await anyio.sleep(0.02)  # noqa: sleep-ok


# --- three real nodes ----------------------------------------------------------------------


def _token(user_id: int, blog_id: int = 7, post_id: int = 42) -> str:
    return issue(SECRET, blog_id=blog_id, post_id=post_id, user_id=user_id, ttl_seconds=600,
                 name=f"User {user_id}")


ADMIN = {"Authorization": f"Bearer {issue_scoped(SECRET, scope='admin', ttl_seconds=600)}"}
READ = {"Authorization": f"Bearer {issue_scoped(SECRET, scope='read', ttl_seconds=600)}"}


def _room_url(node: ServerProcess, user_id: int, blog_id: int = 7, post_id: int = 42) -> str:
    return f"{node.room_url(blog_id, post_id)}?token={_token(user_id, blog_id, post_id)}"


async def _get(node: ServerProcess, path: str, headers: dict[str, str] = READ) -> Any:
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        answer = await client.get(f"{node.http_url}{path}", headers=headers)
        answer.raise_for_status()
        return answer.json()


async def _until_answer(
    node: ServerProcess, path: str, done: Callable[[Any], bool], headers: dict[str, str] = READ
) -> Any:
    """Poll another process's answer until `done` holds (bounded)."""
    with anyio.fail_after(TIMEOUT):
        while True:  # bounded by the timeout
            answer = await _get(node, path, headers)
            if done(answer):
                return answer
            # No event crosses the process boundary: polling its answer is the way to see.
            await anyio.sleep(0.05)  # noqa: sleep-ok


@pytest.mark.slow
async def test_every_node_gives_the_same_roster_live_stats_and_its_own_health(
    tmp_path: Path, redis_server: ThrowawayRedis, postgres_url: str  # noqa: F811
) -> None:
    async with (
        cluster_nodes(tmp_path, redis_server.url, postgres_url, "--secret", SECRET) as nodes,
        RawClient.connect(_room_url(nodes[0], 1)) as ada,
        RawClient.connect(_room_url(nodes[1], 2)) as bob,
        RawClient.connect(_room_url(nodes[2], 2)) as bob_again,
    ):
        await ada.enter(11, user=1)
        await bob.enter(22, user=2)
        await bob_again.enter(23, user=2)
        path = "/api/rooms/7/42"
        roster = await _until_answer(nodes[2], path, lambda r: r["session_count"] == 3)
        assert [await _get(node, path) for node in nodes] == [roster] * 3
        assert roster["contributor_count"] == 2
        where = {s["session_id"]: s["node"] for c in roster["contributors"] for s in c["sessions"]}
        assert where == {11: "node1", 22: "node2", 23: "node3"}
        for read in ("/api/rooms", "/api/stats/live", "/api/stats/live?blog_id=7"):
            answers = [await _get(node, read) for node in nodes]
            assert answers == [answers[0]] * 3, read
        live = answers[0]
        assert (live["active_sessions"], live["active_contributors"]) == (3, 2)
        for index, node in enumerate(nodes, start=1):
            # Nodes alive as of the node's last heartbeat: the first node joined alone, and
            # counts the later ones from its next beat on.
            health = await _until_answer(
                node, "/healthz", lambda h: h["cluster"]["nodes_alive"] == 3
            )
            assert health["status"] == "ok"
            assert health["node"] == f"node{index}"
            assert health["cluster"] == {"redis": True, "nodes_alive": 3}
            assert health["sessions"] == 1  # this node's own figures stay as they were
        assert (await _get(nodes[0], "/api/rooms/7/43"))["loaded"] is False


@pytest.mark.slow
async def test_a_kick_on_one_node_closes_the_user_everywhere_and_every_node_refuses_the_token(
    tmp_path: Path, redis_server: ThrowawayRedis, postgres_url: str  # noqa: F811
) -> None:
    async with (
        cluster_nodes(tmp_path, redis_server.url, postgres_url, "--secret", SECRET) as nodes,
        RawClient.connect(_room_url(nodes[1], 101)) as ada,
        httpx.AsyncClient(timeout=TIMEOUT) as http,
    ):
        await ada.enter(111, user=101)
        kicked = await http.post(
            f"{nodes[0].http_url}/api/rooms/7/42/kick", json={"user_id": 101}, headers=ADMIN
        )
        assert kicked.status_code == 200, kicked.text
        assert await ada.closed() == (4403, "revoked")
        # The kick was in Redis before the answer; node 3 has it once its announcement
        # arrived (milliseconds): until then a connection may still be let in.
        with anyio.fail_after(TIMEOUT):
            for _attempt in range(100):  # bounded
                async with RawClient.connect(_room_url(nodes[2], 101)) as again:
                    with anyio.move_on_after(0.5):
                        closed = await again.closed()
                        break
            else:
                pytest.fail("node 3 kept admitting the kicked token")
        assert closed == (4403, "revoked")


@pytest.mark.slow
async def test_capture_switched_off_on_one_node_stops_recording_on_another(
    tmp_path: Path, redis_server: ThrowawayRedis, postgres_url: str  # noqa: F811
) -> None:
    async with (
        cluster_nodes(tmp_path, redis_server.url, postgres_url, "--secret", SECRET,
                      count=2) as nodes,
        httpx.AsyncClient(timeout=TIMEOUT) as http,
    ):
        off = await http.put(f"{nodes[0].http_url}/api/capture/7", json={"enabled": False},
                             headers=ADMIN)
        assert off.status_code == 200, off.text
        # Announced at once; polled every second besides.
        await _until_answer(
            nodes[1], "/api/capture",
            lambda answer: answer["blogs"] == {"7": {"enabled": False, "sample_rate": 1.0}},
            ADMIN,
        )
        async with (
            RawClient.connect(_room_url(nodes[1], 1)) as muted,
            RawClient.connect(_room_url(nodes[1], 2, blog_id=8)) as heard,
        ):
            await muted.enter(71, user=1)
            await heard.enter(81, user=2)
            with anyio.fail_after(TIMEOUT):
                while True:  # bounded by the timeout
                    joins = events(postgres_url, "jetpack_rtc_join")
                    if [e for e in joins if e.get("session_id") == 81]:
                        break
                    # The node's recorder writes in batches: poll the shared store.
                    await anyio.sleep(0.1)  # noqa: sleep-ok
        assert not [e for e in events(postgres_url) if e.get("blog_id") == 7]


@pytest.mark.slow
async def test_a_feed_viewer_on_one_node_sees_a_join_on_another(
    tmp_path: Path, redis_server: ThrowawayRedis, postgres_url: str  # noqa: F811
) -> None:
    from websockets.asyncio.client import connect

    async with (
        cluster_nodes(tmp_path, redis_server.url, postgres_url, "--secret", SECRET,
                      count=2) as nodes,
        Redis.from_url(redis_server.url) as redis,
    ):
        feed_url = nodes[0].ws_url + f"/events?blog_id=7&post_id=42&token={_token(9)}"
        with anyio.fail_after(TIMEOUT):
            async with connect(feed_url) as feed:
                await _subscribers(redis, feed_channel(Keys(), ROOM), 1)
                async with RawClient.connect(_room_url(nodes[1], 5)) as joiner:
                    await joiner.enter(555, user=5)
                    while True:  # bounded by the timeout
                        event = json.loads(await feed.recv())
                        if event["props"].get("session_id") == 555:
                            break
        assert event["name"] == "jetpack_rtc_join"


@pytest.mark.slow
async def test_without_redis_reads_are_503_and_the_health_check_stays_200(
    tmp_path: Path, redis_server: ThrowawayRedis, postgres_url: str  # noqa: F811
) -> None:
    async with (
        cluster_nodes(tmp_path, redis_server.url, postgres_url, count=1) as nodes,
        httpx.AsyncClient(base_url=nodes[0].http_url, timeout=TIMEOUT) as http,
    ):
        redis_server.stop()
        try:
            for path in ("/api/rooms", "/api/rooms/7/42", "/api/stats/live"):
                answer = await http.get(path)
                assert answer.status_code == 503, (path, answer.text)
                assert answer.json()["status"] == 503
                assert "Redis" in answer.json()["error"]
            # The heartbeat notices: the node says so, and keeps serving (200).
            health = await _until_answer(
                nodes[0], "/healthz", lambda health: health["cluster"]["redis"] is False
            )
            assert health["status"] == "ok"
        finally:
            redis_server.start()
