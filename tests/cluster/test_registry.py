"""The shared roster against a real Redis: exact admission under a race, takeover, leaving,
reaping exactly once, shared settings and re-registration after Redis restarted empty."""

from __future__ import annotations

import asyncio
import os

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from rtc.cluster.keys import Keys, session_member
from rtc.cluster.outcomes import Reaped
from rtc.cluster.registry import Registry
from rtc.decisions import Admission, Conflict, Decision, Refusal
from rtc.history import RecentEnd
from rtc.ids import RoomKey
from tests.cluster.conftest import RedisFactory
from tests.redis_fixtures import ThrowawayRedis

TIMEOUT = 10.0 * float(os.environ.get("RTC_TEST_TIMEOUT_FACTOR", "1"))
KEYS = Keys("rtc")
ROOM = RoomKey(1, 2)
OTHER_ROOM = RoomKey(1, 3)
HOUR = 3600_000
DAY = 24 * HOUR
NOW = 1_700_000_000_000


async def admit(
    registry: Registry,
    session_id: int,
    user_id: int | None,
    *,
    conn: int | None = None,
    key: RoomKey = ROOM,
    max_contributors: int = 0,
    max_connections: int = 0,
    now_ms: int = NOW,
) -> Decision:
    async with asyncio.timeout(TIMEOUT):
        return await registry.admit(
            key,
            conn=session_id if conn is None else conn,
            session_id=session_id,
            user_id=user_id,
            name=None if user_id is None else f"user {user_id}",
            connected_at_ms=now_ms - 5,
            now_ms=now_ms,
            max_contributors=max_contributors,
            max_connections=max_connections,
            blocked_memory_ms=HOUR,
            ends_memory_ms=DAY,
        )


async def leave(
    registry: Registry, session_id: int, *, conn: int | None = None, key: RoomKey = ROOM,
    ended_at_ms: int = NOW + 100, abnormal: bool = False, clock: int | None = 3,
) -> str:
    async with asyncio.timeout(TIMEOUT):
        return await registry.leave(
            key,
            conn=session_id if conn is None else conn,
            session_id=session_id,
            ended_at_ms=ended_at_ms,
            abnormal=abnormal,
            clock=clock,
            ends_memory_ms=DAY,
        )


async def log_entries(client: Redis, key: RoomKey) -> list[dict[str, str]]:
    entries = await client.xrange(KEYS.log(key)) or []
    return [
        {_text(name): _text(value) for name, value in (fields or {}).items()}
        for _, fields in entries
    ]


def _text(value: bytes | str | None) -> str:
    assert isinstance(value, bytes)
    return value.decode()


async def redis_now_ms(client: Redis) -> int:
    seconds, micros = await client.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def until_redis_clock_passes(client: Redis, moment_ms: int) -> None:
    """Wait (bounded) until Redis's clock is past `moment_ms`: a heartbeat is then stale
    for a node timeout of 0."""
    async with asyncio.timeout(TIMEOUT):
        for _ in range(10_000):  # bounded: a millisecond or two of Redis's clock
            if await redis_now_ms(client) > moment_ms:
                return
    raise AssertionError("Redis's clock did not move")


async def answering(client: Redis) -> None:
    """Wait (bounded) until a client answers again after Redis restarted."""
    async with asyncio.timeout(TIMEOUT):
        for _ in range(100):  # bounded: the client reconnects on its next command
            try:
                assert await client.ping()
                return
            except RedisConnectionError:
                continue
    raise AssertionError("Redis did not answer again")


@pytest.fixture
def registry(redis_clients: RedisFactory) -> Registry:
    return Registry(redis_clients(), KEYS, "node-a")


# --- admission ---------------------------------------------------------------------------

# (present sessions as (session_id, user_id), newcomer, limits, expected)
ADMISSIONS = [
    pytest.param([], (1, 10), (0, 0), Admission((10,), 1), id="empty-room"),
    pytest.param(
        [(1, 10), (2, 20)], (3, 30), (2, 0),
        Refusal(2, "contributors", (10, 20), 2, first=True), id="contributor-limit",
    ),
    pytest.param(
        [(1, 10), (2, 20)], (3, 10), (2, 0), Admission((10, 20), 3),
        id="a-present-users-further-tab-passes-the-contributor-limit",
    ),
    pytest.param(
        [(1, 10), (2, 20)], (3, 10), (0, 2),
        Refusal(2, "connections", (10, 20), 2, first=True),
        id="the-connection-limit-counts-sessions-even-of-a-present-user",
    ),
    pytest.param(
        [(1, 10), (2, 20)], (3, 30), (2, 2),
        Refusal(2, "connections", (10, 20), 2, first=True), id="connections-checked-first",
    ),
    pytest.param(
        [(1, None)], (2, None), (1, 0), Refusal(1, "contributors", (), 1, first=True),
        id="an-anonymous-session-is-a-contributor-of-its-own",
    ),
    pytest.param(
        [(1, None)], (2, 10), (1, 0), Refusal(1, "contributors", (), 1, first=True),
        id="an-anonymous-session-holds-its-place",
    ),
    pytest.param(
        [(1, 10), (2, None)], (3, 20), (3, 3), Admission((10, 20), 3), id="under-both-limits",
    ),
]


@pytest.mark.parametrize(("present", "newcomer", "limits", "expected"), ADMISSIONS)
async def test_admission_follows_the_room_limits(
    registry: Registry,
    present: list[tuple[int, int | None]],
    newcomer: tuple[int, int | None],
    limits: tuple[int, int],
    expected: Decision,
) -> None:
    for session_id, user_id in present:
        assert isinstance(await admit(registry, session_id, user_id), Admission)
    max_contributors, max_connections = limits
    decision = await admit(
        registry, *newcomer, max_contributors=max_contributors, max_connections=max_connections
    )
    assert decision == expected
    sessions = {r.session_id for r in await registry.roster(ROOM)}
    expected_sessions = {session_id for session_id, _ in present}
    if isinstance(expected, Admission):
        expected_sessions.add(newcomer[0])
    assert sessions == expected_sessions  # nobody evicted, the refused not registered


async def test_ten_new_users_racing_for_two_places_through_three_nodes(
    redis_clients: RedisFactory,
) -> None:
    nodes = [Registry(redis_clients(), KEYS, f"node-{i}") for i in range(3)]
    assert isinstance(await admit(nodes[0], 1, 1), Admission)  # 1 of 3 places taken

    async def newcomer(i: int) -> Decision:
        return await admit(nodes[i % 3], 100 + i, 100 + i, max_contributors=3)

    decisions = await asyncio.gather(*(newcomer(i) for i in range(10)))
    admitted = [d for d in decisions if isinstance(d, Admission)]
    refused = [d for d in decisions if isinstance(d, Refusal)]
    assert (len(admitted), len(refused)) == (2, 8)
    assert all(r.first and r.limit == 3 and r.limit_kind == "contributors" for r in refused)
    roster = await nodes[1].roster(ROOM)
    assert len(roster) == 3
    assert {r.node for r in roster} <= {"node-0", "node-1", "node-2"}
    # every node sees the same room; a refused client that retries is not `first` again
    refused_ids = [100 + i for i, d in enumerate(decisions) if isinstance(d, Refusal)]
    for session_id in refused_ids:
        again = await admit(nodes[2], session_id, session_id, max_contributors=3)
        assert isinstance(again, Refusal)
        assert not again.first
        assert again.contributors == tuple(sorted(r.user_id for r in roster if r.user_id))
    # ...until its refusal is forgotten (the blocked memory window)
    later = await admit(nodes[0], refused_ids[0], refused_ids[0], max_contributors=3,
                        now_ms=NOW + HOUR + 1)
    assert isinstance(later, Refusal)
    assert later.first


async def test_further_tabs_of_present_users_are_always_admitted_in_a_race(
    redis_clients: RedisFactory,
) -> None:
    nodes = [Registry(redis_clients(), KEYS, f"node-{i}") for i in range(3)]
    assert isinstance(await admit(nodes[0], 1, 1), Admission)
    assert isinstance(await admit(nodes[1], 2, 2), Admission)

    async def tab(i: int) -> Decision:
        user = 1 if i % 2 else 2
        return await admit(nodes[i % 3], 100 + i, user, max_contributors=2)

    async def stranger(i: int) -> Decision:
        return await admit(nodes[i % 3], 200 + i, 200 + i, max_contributors=2)

    tabs = asyncio.gather(*(tab(i) for i in range(6)))
    strangers = asyncio.gather(*(stranger(i) for i in range(6)))
    tab_decisions, stranger_decisions = await asyncio.gather(tabs, strangers)
    assert all(isinstance(d, Admission) for d in tab_decisions)
    assert all(isinstance(d, Refusal) for d in stranger_decisions)
    assert len(await nodes[0].roster(ROOM)) == 8


# --- takeover, conflict, idempotency -----------------------------------------------------


async def test_a_reconnect_through_another_node_takes_the_session_over(
    redis_clients: RedisFactory,
) -> None:
    client = redis_clients()
    node_a = Registry(redis_clients(), KEYS, "node-a")
    node_b = Registry(redis_clients(), KEYS, "node-b")
    assert await admit(node_a, 7, 1, conn=11) == Admission((1,), 1)
    assert await admit(node_a, 8, 2, conn=12) == Admission((1, 2), 2)

    # the same session of the same user on node B: taken over, even with the room full
    decision = await admit(node_b, 7, 1, conn=51, max_contributors=1, max_connections=1)
    assert decision == Admission(
        (1, 2), 2, previous_end=RecentEnd(NOW, True, None), replaced=("node-a", 11)
    )
    (taken,) = [r for r in await node_a.roster(ROOM) if r.session_id == 7]
    assert (taken.node, taken.conn) == ("node-b", 51)
    member = session_member(ROOM, 7).encode()
    assert await client.smembers(KEYS.node_sessions("node-a")) == {
        session_member(ROOM, 8).encode()
    }
    assert await client.smembers(KEYS.node_sessions("node-b")) == {member}
    assert member in await client.hgetall(KEYS.node_replaced("node-a"))
    assert await log_entries(client, ROOM) == [
        {"n": "node-b", "k": "replaced", "t": "node-a", "d": "11"}
    ]

    # the same admission again: idempotent
    assert await admit(node_b, 7, 1, conn=51) == Admission((1, 2), 2)
    # another user claiming the session id: conflict, nothing changes
    assert await admit(node_a, 7, 3, conn=13) == Conflict()
    assert await admit(node_a, 7, None, conn=13) == Conflict()

    # the old connection ends: its registration had been replaced; then nothing is left
    assert await leave(node_a, 7, conn=11) == "replaced"
    assert await client.hgetall(KEYS.node_replaced("node-a")) == {}
    assert await leave(node_a, 7, conn=11) == "gone"
    assert len(await node_b.roster(ROOM)) == 2
    assert len(await log_entries(client, ROOM)) == 1


async def test_a_takeover_keeps_the_remembered_end(registry: Registry) -> None:
    assert isinstance(await admit(registry, 7, 1, conn=1), Admission)
    assert await leave(registry, 7, conn=1, ended_at_ms=NOW + 10, abnormal=True, clock=4) == "left"
    assert isinstance(await admit(registry, 7, 1, conn=2), Admission)
    # the same node, another connection: taken over, the stored end returned
    decision = await admit(registry, 7, 1, conn=3)
    assert decision == Admission(
        (1,), 1, previous_end=RecentEnd(NOW + 10, True, 4), replaced=("node-a", 2)
    )
    assert await leave(registry, 7, conn=2) == "replaced"
    assert await leave(registry, 7, conn=3) == "left"


# --- leaving -----------------------------------------------------------------------------


async def test_leaving_records_the_end_and_empties_the_room(
    registry: Registry, redis_clients: RedisFactory
) -> None:
    client = redis_clients()
    assert isinstance(await admit(registry, 1, 10), Admission)
    assert isinstance(await admit(registry, 2, 10), Admission)
    assert isinstance(await admit(registry, 3, None, key=OTHER_ROOM), Admission)
    assert set(await registry.rooms()) == {ROOM, OTHER_ROOM}

    assert await leave(registry, 1, ended_at_ms=NOW + 100, clock=5) == "left"
    assert await leave(registry, 1) == "gone"
    assert await leave(registry, 2, conn=99) == "gone"  # not that connection's
    # user 10 is still present through session 2: its contributor count went down by one
    assert await admit(registry, 4, 20, max_contributors=2) == Admission((10, 20), 2)
    assert await leave(registry, 2) == "left"
    assert await admit(registry, 5, 30, max_contributors=2) == Admission((20, 30), 2)
    assert await leave(registry, 4) == "left"
    assert await leave(registry, 5) == "left"
    assert await registry.roster(ROOM) == []
    assert set(await registry.rooms()) == {OTHER_ROOM}
    assert await client.exists(KEYS.sessions(ROOM), KEYS.contributors(ROOM)) == 0
    assert 0 < await client.pttl(KEYS.ends(ROOM)) <= DAY

    # a reconnect of session 1 (on any node) finds its previous end
    other = Registry(redis_clients(), KEYS, "node-b")
    decision = await admit(other, 1, 10, now_ms=NOW + 1000)
    assert decision == Admission((10,), 1, previous_end=RecentEnd(NOW + 100, False, 5))
    # ...until the end is forgotten
    assert await leave(other, 1, ended_at_ms=NOW + 2000) == "left"
    late = await admit(other, 1, 10, now_ms=NOW + 2000 + DAY + 1)
    assert late == Admission((10,), 1)


# --- liveness and reaping ----------------------------------------------------------------


async def test_a_dead_node_is_reaped_exactly_once(redis_clients: RedisFactory) -> None:
    client = redis_clients()
    dead = Registry(redis_clients(), KEYS, "node-dead")
    survivor = Registry(redis_clients(), KEYS, "node-b")
    reapers = [Registry(redis_clients(), KEYS, f"reaper-{i}") for i in range(2)]
    assert isinstance(await admit(dead, 1, 10, conn=1), Admission)
    assert isinstance(await admit(dead, 2, None, conn=2), Admission)
    assert isinstance(await admit(dead, 3, 30, conn=3, key=OTHER_ROOM), Admission)
    # session 1 reconnects through node B before the reaping: the reaper must leave it
    assert isinstance(await admit(survivor, 1, 10, conn=9), Admission)

    beat = await dead.heartbeat({"address": "10.0.0.1:8080"}, joining=True)
    assert (beat.reaped, beat.alive) == (False, 1)
    assert await dead.nodes_alive(60_000) == ["node-dead"]
    await until_redis_clock_passes(client, beat.now_ms)
    assert await dead.nodes_alive(0) == []

    results = await asyncio.gather(
        *(reaper.reap(node_timeout_ms=0, ends_memory_ms=DAY) for reaper in reapers)
    )
    assert sorted(len(result) for result in results) == [0, 3]  # one reaper claimed it
    reaped = {
        (item.key, item.registration.session_id): item for result in results for item in result
    }
    assert set(reaped) == {(ROOM, 1), (ROOM, 2), (OTHER_ROOM, 3)}
    assert not reaped[ROOM, 1].removed
    assert (reaped[ROOM, 1].registration.node, reaped[ROOM, 1].registration.conn) == (
        "node-dead", 1
    )
    assert reaped[ROOM, 2] == Reaped(ROOM, reaped[ROOM, 2].registration, removed=True)
    assert reaped[ROOM, 2].registration.user_id is None
    assert reaped[OTHER_ROOM, 3].removed
    assert reaped[OTHER_ROOM, 3].registration.user_id == 30

    # what stays is node B's; the emptied room is gone; the logs say who is gone
    (left,) = await survivor.roster(ROOM)
    assert (left.node, left.session_id) == ("node-b", 1)
    assert set(await survivor.rooms()) == {ROOM}
    winner = next(r.node_id for r, result in zip(reapers, results, strict=True) if result)
    assert await log_entries(client, OTHER_ROOM) == [{"n": winner, "k": "gone", "d": "3"}]
    assert {"n": winner, "k": "gone", "d": "2"} in await log_entries(client, ROOM)
    assert await client.exists(
        KEYS.node_sessions("node-dead"), KEYS.node_replaced("node-dead"),
        KEYS.node_info("node-dead"),
    ) == 0
    # the contributor count followed: user 30's place is free again
    assert await admit(survivor, 4, 40, key=OTHER_ROOM, max_contributors=1) == Admission((40,), 1)
    # the reaped end is remembered as abnormal, at Redis's clock
    back = await admit(survivor, 2, None, conn=12)
    assert isinstance(back, Admission)
    assert back.previous_end is not None
    assert back.previous_end.abnormal
    assert back.previous_end.ended_at_ms >= beat.now_ms

    # nobody reaps it again; the node itself, when it comes back, learns it was reaped (once)
    assert await reapers[0].reap(node_timeout_ms=0, ends_memory_ms=DAY) == []
    assert await leave(dead, 3, conn=3, key=OTHER_ROOM) == "gone"
    assert (await dead.heartbeat({}, joining=False)).reaped
    again = await dead.heartbeat({}, joining=False)
    assert (again.reaped, again.missing) == (False, False)


async def test_a_node_does_not_reap_itself_nor_a_live_node(redis_clients: RedisFactory) -> None:
    node = Registry(redis_clients(), KEYS, "node-a")
    other = Registry(redis_clients(), KEYS, "node-b")
    assert isinstance(await admit(node, 1, 10), Admission)
    beat = await node.heartbeat({}, joining=True)
    await until_redis_clock_passes(redis_clients(), beat.now_ms)
    assert await node.reap(node_timeout_ms=0, ends_memory_ms=DAY) == []
    assert await other.reap(node_timeout_ms=60_000, ends_memory_ms=DAY) == []
    assert len(await other.roster(ROOM)) == 1


async def test_heartbeat_reports_a_missing_node(redis_clients: RedisFactory) -> None:
    client = redis_clients()
    node = Registry(redis_clients(), KEYS, "node-a")
    first = await node.heartbeat({"address": "a:1", "started_at": "5"}, joining=True)
    assert (first.reaped, first.missing, first.alive) == (False, False, 1)
    assert await client.hgetall(KEYS.node_info("node-a")) == {
        b"address": b"a:1", b"started_at": b"5"
    }
    await client.zrem(KEYS.nodes, "node-a")  # as after Redis came back empty
    beat = await node.heartbeat({}, joining=False)
    assert (beat.reaped, beat.missing) == (False, True)
    assert beat.now_ms >= first.now_ms


# --- settings ----------------------------------------------------------------------------


async def test_the_first_node_records_the_settings_the_others_must_share(
    redis_clients: RedisFactory,
) -> None:
    first = Registry(redis_clients(), KEYS, "node-a")
    second = Registry(redis_clients(), KEYS, "node-b")
    settings = {"max_contributors": "2", "max_connections": "0", "event_prefix": "jetpack_rtc"}
    assert await first.check_settings(settings, node_timeout_ms=10_000) is None
    beat = await first.heartbeat({}, joining=True)
    assert await second.check_settings(settings, node_timeout_ms=10_000) is None
    assert await second.check_settings(
        {**settings, "max_contributors": "3"}, node_timeout_ms=10_000
    ) == "max_contributors"
    assert await second.check_settings(
        {"event_prefix": "x", "max_connections": "1"}, node_timeout_ms=10_000
    ) == "event_prefix"  # the first that differs, in the order given
    assert await second.check_settings(
        {**settings, "node_timeout": "10000"}, node_timeout_ms=10_000
    ) == "node_timeout"  # one the cluster never recorded differs too
    # once no node is alive, the next first node records its own
    await until_redis_clock_passes(redis_clients(), beat.now_ms)
    assert await second.check_settings({"max_contributors": "3"}, node_timeout_ms=0) is None
    assert await first.check_settings({"max_contributors": "3"}, node_timeout_ms=0) is None
    await second.heartbeat({}, joining=True)
    assert await first.check_settings(settings, node_timeout_ms=10_000) == "max_contributors"


# --- Redis restarted empty -----------------------------------------------------------------


async def test_register_all_after_redis_restarted_empty(
    redis_server: ThrowawayRedis, redis_clients: RedisFactory
) -> None:
    clients = [redis_clients() for _ in range(3)]
    client = clients[0]
    node = Registry(clients[1], KEYS, "node-a")
    other = Registry(clients[2], KEYS, "node-b")
    assert isinstance(await admit(node, 1, 10), Admission)
    assert isinstance(await admit(node, 2, 10), Admission)
    assert isinstance(await admit(node, 3, None, key=OTHER_ROOM), Admission)
    held = {key: await node.roster(key) for key in (ROOM, OTHER_ROOM)}
    local = [(key, registration) for key, roster in held.items() for registration in roster]

    redis_server.stop()
    redis_server.start()
    for each in clients:  # a command may fail while the client notices Redis restarted
        await answering(each)
    assert await node.rooms() == {}

    await node.register_all(local)
    await node.register_all(local)  # idempotent
    assert await node.rooms() == held
    assert await other.roster(ROOM) == held[ROOM]
    # limits count the re-registered sessions (contributors counted once, not twice)
    assert isinstance(await admit(other, 9, 90, max_contributors=1, conn=91), Refusal)
    assert await admit(other, 9, 90, max_contributors=2, conn=91) == Admission((10, 90), 3)

    # a session another node took over meanwhile stays with it; one that ended while
    # Redis was away is dropped, and the others hear it is gone
    assert isinstance(await admit(other, 2, 10, conn=92), Admission)
    await node.register_all([(ROOM, r) for r in held[ROOM]])
    roster = {r.session_id: r.node for r in await node.roster(ROOM)}
    assert roster == {1: "node-a", 2: "node-b", 9: "node-b"}
    assert set(await node.rooms()) == {ROOM}
    assert {"n": "node-a", "k": "gone", "d": "3"} in await log_entries(client, OTHER_ROOM)
    assert await leave(node, 3, key=OTHER_ROOM) == "gone"


async def test_forget_node_leaves_nothing_behind(redis_clients: RedisFactory) -> None:
    client = redis_clients()
    node = Registry(redis_clients(), KEYS, "node-a")
    assert isinstance(await admit(node, 1, 10), Admission)
    await node.heartbeat({"address": "a:1"}, joining=True)
    await node.forget_node()
    assert await node.rooms() == {}
    assert await node.nodes_alive(60_000) == []
    assert await client.keys("rtc:node:*") == []
    assert await log_entries(client, ROOM) == [{"n": "node-a", "k": "gone", "d": "1"}]


def test_a_node_id_cannot_break_the_key_names(redis_clients: RedisFactory) -> None:
    for bad in ("", "a:b", "{a}"):
        with pytest.raises(ValueError, match="node_id"):
            Registry(redis_clients(), KEYS, bad)
