"""Three real `rtc serve --cluster` nodes on one throwaway Redis and one fresh PostgreSQL
database, driven by real y-websocket clients in Node: one room, whichever node serves it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from pycrdt import Doc, Text

from rtc.protocol import SyncUpdate
from tests.cluster.harness import (
    NODE_TIMEOUT,
    balancer,
    cluster_nodes,
    events,
    node_args,
    room_json,
)
from tests.jsclient import NodeClients
from tests.redis_fixtures import ThrowawayRedis
from tests.rtc.clients import TIMEOUT, RawClient
from tests.rtc.processes import rtc_process

pytestmark = [pytest.mark.slow, pytest.mark.node]

ROOM = "7/42"


def _user(user_id: int) -> dict[str, object]:
    return {"id": user_id, "name": f"User {user_id}"}


async def test_edits_and_presence_cross_nodes_once_and_not_back_to_the_sender(
    tmp_path: Path, redis_server: ThrowawayRedis, postgres_url: str
) -> None:
    async with (
        cluster_nodes(tmp_path, redis_server.url, postgres_url) as nodes,
        NodeClients() as node,
    ):
        ada = await node.open(nodes[0].ws_url + "/rooms", ROOM, user=_user(1))
        bob = await node.open(nodes[1].ws_url + "/rooms", ROOM, user=_user(2))
        cy = await node.open(nodes[2].ws_url + "/rooms", ROOM, user=_user(3))
        for client in (ada, bob, cy):
            await client.wait_synced()
        await ada.insert(0, "hello ")
        await bob.wait_text("hello ")
        await cy.wait_text("hello ")
        await cy.insert(6, "world")
        for client in (ada, bob, cy):
            await client.wait_text("hello world")
        everyone = {ada.client_id, bob.client_id, cy.client_id}
        for client in (ada, bob, cy):
            await client.wait_awareness(lambda states: everyone <= set(states))
        # Once: the text is not doubled anywhere (an echoed update would be a no-op in Yjs,
        # so the roster and the stored document are what show duplication).
        rosters = [await room_json(server) for server in nodes]
        assert all(r["session_count"] == 3 for r in rosters), rosters
        assert all(r["contributors"] == rosters[0]["contributors"] for r in rosters)
        assert [c["id"] for c in rosters[0]["contributors"]] == [1, 2, 3]


async def test_an_update_reaches_the_other_node_once_and_never_comes_back(
    tmp_path: Path, redis_server: ThrowawayRedis, postgres_url: str
) -> None:
    async with (
        cluster_nodes(tmp_path, redis_server.url, postgres_url, count=2) as nodes,
        RawClient.connect(nodes[0].room_url()) as sender,
        RawClient.connect(nodes[1].room_url()) as receiver,
    ):
        await sender.enter(101, user=1)
        await receiver.enter(202, user=2)
        doc: Doc[Any] = Doc(client_id=101)
        text = doc.get("content", type=Text)
        text += "once"
        update = doc.get_update()
        await sender.send(SyncUpdate(update))
        await receiver.recv_until(lambda m: isinstance(m, SyncUpdate))
        await sender.barrier()
        await receiver.barrier()
        # Elapsed time under test: a window for a duplicate to come by another path.
        await anyio.sleep(0.3)  # noqa: sleep-ok - elapsed time under test
        await sender.barrier()
        await receiver.barrier()
    assert [m for m in sender.received if isinstance(m, SyncUpdate)] == []
    assert len([m for m in receiver.received if isinstance(m, SyncUpdate)]) == 1


async def test_a_room_loaded_on_another_node_mid_edit_converges_with_nothing_lost(
    tmp_path: Path, redis_server: ThrowawayRedis, postgres_url: str
) -> None:
    async with (
        cluster_nodes(tmp_path, redis_server.url, postgres_url, count=2) as nodes,
        NodeClients() as node,
    ):
        ada = await node.open(nodes[0].ws_url + "/rooms", ROOM, user=_user(1))
        await ada.wait_synced()
        typed = ""
        async with anyio.create_task_group() as tg:
            async def type_on() -> None:
                nonlocal typed
                for index in range(60):  # typing goes on while node2 loads the room
                    character = chr(ord("a") + index % 26)
                    await ada.insert(len(typed), character)
                    typed += character

            tg.start_soon(type_on)
            bob = await node.open(nodes[1].ws_url + "/rooms", ROOM, user=_user(2))
            await bob.wait_synced()
        await bob.wait_text(typed)
        await bob.insert(0, ">")
        await ada.wait_text(">" + typed)


@pytest.mark.parametrize("through", ["nodes", "haproxy"])
async def test_ten_users_race_for_two_places_through_three_nodes(
    tmp_path: Path, redis_server: ThrowawayRedis, postgres_url: str, through: str
) -> None:
    async with (
        cluster_nodes(tmp_path, redis_server.url, postgres_url, "--max-contributors", "2")
        as nodes,
        balancer(nodes) as proxy,
        NodeClients() as node,
    ):
        # Each newcomer through a node of its own, or through the balancer's round robin.
        urls = (
            [server.ws_url + "/rooms" for server in nodes]
            if through == "nodes"
            else [proxy.ws_url + "/rooms"] * 3
        )
        # The document has content before the race: a blocked client must never see it.
        writer = await node.open(nodes[0].ws_url + "/rooms", "7/43", user=_user(99))
        await writer.wait_synced()
        await writer.insert(0, "secret")
        await writer.close()

        clients = []
        async with anyio.create_task_group() as tg:
            async def join(index: int) -> None:
                clients.append(
                    await node.open(urls[index % 3], "7/43", user=_user(index + 1))
                )

            for index in range(10):
                tg.start_soon(join, index)

        for client in clients:  # each one is let in or turned away
            await client.wait_for(
                lambda s: s.synced or any(e.code == 4429 for e in s.closes)
            )
        admitted = [c for c in clients if c.state.synced]
        blocked = [c for c in clients if any(e.code == 4429 for e in c.state.closes)]
        assert len(admitted) == 2
        assert len(blocked) == 8
        assert all(c.state.text == "" for c in blocked)
        for client in admitted:
            await client.wait_text("secret")
        rosters = [await room_json(server, 7, 43) for server in nodes]
        assert all(r["contributor_count"] == 2 for r in rosters), rosters
        for server in nodes:  # every event reaches the shared store before it stops
            await server.terminate()

    blocked_events = events(postgres_url, "jetpack_rtc_blocked")
    assert len(blocked_events) == 8
    assert len({e["session_id"] for e in blocked_events}) == 8


async def test_a_killed_node_leaves_no_ghosts_and_its_clients_come_back_elsewhere(
    tmp_path: Path, redis_server: ThrowawayRedis, postgres_url: str
) -> None:
    async with (
        cluster_nodes(tmp_path, redis_server.url, postgres_url) as nodes,
        NodeClients() as node,
    ):
        doomed, survivor, watching = nodes
        watcher = await node.open(watching.ws_url + "/rooms", ROOM, user=_user(2))
        await watcher.wait_synced()
        async with balancer([doomed, survivor]) as proxy:
            # A client through the balancer that lands on the doomed node (round robin:
            # within two tries), and one connected to the doomed node directly, which has
            # nowhere to come back to: a ghost unless the cluster removes it.
            for _attempt in range(4):
                roamer = await node.open(proxy.ws_url + "/rooms", ROOM, user=_user(1))
                await roamer.wait_synced()
                roster = await room_json(watching)
                served_by = {s["session_id"]: s["node"] for c in roster["contributors"]
                             for s in c["sessions"]}
                if served_by.get(roamer.client_id) == "node1":
                    break
                await roamer.close()
            ghost = await node.open(doomed.ws_url + "/rooms", ROOM, user=_user(3))
            await ghost.wait_synced()
            await roamer.insert(0, "kept ")
            await watcher.wait_text("kept ")
            await watcher.wait_awareness(lambda states: ghost.client_id in states)
            # What was received more than 1 s before the kill must survive it.
            await anyio.sleep(1.2)  # noqa: sleep-ok - elapsed time under test
            await doomed.kill()
            with anyio.fail_after(NODE_TIMEOUT + 2):
                await watcher.wait_awareness(lambda states: ghost.client_id not in states)
            # The roamer's provider reconnects through the balancer to the survivor, as the
            # same session.
            await roamer.wait_for(lambda s: len(s.closes) >= 1 and s.synced)
            await roamer.insert(0, "back ")
            await watcher.wait_text("back kept ")
            roster = await room_json(watching)
            sessions = {s["session_id"]: s["node"] for c in roster["contributors"]
                        for s in c["sessions"]}
            assert sessions == {watcher.client_id: "node3", roamer.client_id: "node2"}
            # The reaper's events reach the shared store in the background: wait for them.
            with anyio.fail_after(TIMEOUT):
                while True:  # bounded by the timeout: another process writes them
                    reaped = [e for e in events(postgres_url, "jetpack_rtc_connection_error")
                              if e.get("error_code") == "node-lost"]
                    if len(reaped) >= 2:
                        break
                    await anyio.sleep(0.1)  # noqa: sleep-ok - polls the shared store another process writes
            everything = events(postgres_url)
        for lost in (roamer, ghost):
            leaves = [e for e in everything if e["name"] == "jetpack_rtc_leave"
                      and e["session_id"] == lost.client_id]
            errors = [e for e in everything if e["name"] == "jetpack_rtc_connection_error"
                      and e["session_id"] == lost.client_id]
            assert [e["clean"] for e in leaves] == [False]
            assert [e["error_code"] for e in errors] == ["node-lost"]
        rejoins = [e for e in everything if e["name"] == "jetpack_rtc_join"
                   and e["session_id"] == roamer.client_id]
        assert [e.get("reconnect") for e in rejoins] == [None, True]


async def test_a_node_with_another_limit_refuses_to_start(
    tmp_path: Path, redis_server: ThrowawayRedis, postgres_url: str
) -> None:
    async with cluster_nodes(tmp_path, redis_server.url, postgres_url, "--max-contributors",
                             "2", count=1):
        with anyio.fail_after(TIMEOUT):
            result = await anyio.run_process(
                [sys.executable, "-m", "rtc", "serve", "--port", "0", "--data-dir",
                 str(tmp_path / "other"),
                 *node_args(redis_server.url, postgres_url, "other", "--max-contributors", "3")],
                check=False,
            )
    assert result.returncode == 2
    assert "--max-contributors differs" in result.stderr.decode()


async def test_redis_stopped_and_restarted_editing_goes_on_and_everything_converges(
    tmp_path: Path, redis_server: ThrowawayRedis, postgres_url: str
) -> None:
    async with (
        cluster_nodes(tmp_path, redis_server.url, postgres_url, count=2) as nodes,
        NodeClients() as node,
    ):
        ada = await node.open(nodes[0].ws_url + "/rooms", ROOM, user=_user(1))
        ann = await node.open(nodes[0].ws_url + "/rooms", ROOM, user=_user(3))
        bob = await node.open(nodes[1].ws_url + "/rooms", ROOM, user=_user(2))
        for client in (ada, ann, bob):
            await client.wait_synced()
        redis_server.stop()
        await nodes[0].wait_log("Redis .* stopped answering")
        await ada.insert(0, "during ")
        await ann.wait_text("during ")  # same node: carries on
        late = await node.open(nodes[1].ws_url + "/rooms", ROOM, user=_user(4))
        await late.wait_for(lambda s: any(e.code == 4503 for e in s.closes))
        assert any(e.reason == "cluster-unavailable" for e in late.state.closes)
        redis_server.start()
        for server in nodes:  # each node re-registers its sessions
            await server.wait_log(r"rtc\.cluster\.node: .* answers again")
        await bob.wait_text("during ")  # resynchronised across nodes
        await late.wait_synced()  # y-websocket retried and got in
        await late.wait_text("during ")
        rosters = [await room_json(server) for server in nodes]
        assert all(r["session_count"] == 4 for r in rosters), rosters


async def test_without_cluster_nothing_needs_redis(tmp_path: Path) -> None:
    async with rtc_process(tmp_path, "--log-level", "WARNING") as server:
        assert server.port
