"""Unmodified yjs + y-websocket clients (Node) against our server."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from tests.jsclient import NodeClients

from .clients import TIMEOUT, serve_rtc

pytestmark = [pytest.mark.node, pytest.mark.slow]

ROOM = "7/42"
ADA = {"id": 1, "name": "Ada"}
BOB = {"id": 2, "name": "Bob"}
CAROL = {"id": 3, "name": "Carol"}


async def test_two_docs_converge_and_awareness_arrives(tmp_path: Path) -> None:
    async with serve_rtc(tmp_path) as rtc, NodeClients() as node:
        ada = await node.open(rtc.url, ROOM, user=ADA)
        bob = await node.open(rtc.url, ROOM, user=BOB)
        await ada.wait_synced()
        await bob.wait_synced()
        await ada.insert(0, "hello")
        await bob.wait_text("hello")
        await bob.insert(5, " world")
        await ada.wait_text("hello world")
        states = await ada.wait_awareness(lambda s: bob.client_id in s)
        assert states[bob.client_id]["collaboratorInfo"]["id"] == 2


async def test_two_tabs_of_one_user_are_two_sessions_named_by_their_client_ids(
    tmp_path: Path,
) -> None:
    async with serve_rtc(tmp_path) as rtc, NodeClients() as node:
        first = await node.open(rtc.url, ROOM, user=ADA)
        second = await node.open(rtc.url, ROOM, user=ADA)
        join1 = await rtc.wait_event("join", session_id=first.client_id)
        join2 = await rtc.wait_event("join", session_id=second.client_id)
        assert first.client_id != second.client_id
        assert join2.props["contributors"] == (1,)
        assert join2.props["session_count"] == 2
        assert join1.props["wp_user_id"] == join2.props["wp_user_id"] == 1

        # A reload is a new Y.Doc: a new session id and a new join.
        await first.close()
        reloaded = await node.open(rtc.url, ROOM, user=ADA)
        await rtc.wait_event("join", session_id=reloaded.client_id)
        assert reloaded.client_id not in (first.client_id, second.client_id)


async def test_a_third_user_is_blocked_with_4429_and_never_gets_the_document(
    tmp_path: Path,
) -> None:
    async with serve_rtc(tmp_path, max_contributors=2) as rtc, NodeClients() as node:
        ada = await node.open(rtc.url, ROOM, user=ADA)
        bob = await node.open(rtc.url, ROOM, user=BOB)
        await ada.insert(0, "draft")
        await bob.wait_text("draft")
        carol = await node.open(rtc.url, ROOM, user=CAROL)
        assert await carol.wait_closed() == (4429, "connection-limit-exceeded")
        blocked = await rtc.wait_event("blocked", session_id=carol.client_id)
        assert blocked.props["wp_user_id"] == 3
        assert blocked.props["limit"] == 2
        # Round trip through the room after the refusal: a fresh joiner syncs, so any
        # reconnect attempt of carol's would have been processed by now.
        dave = await node.open(rtc.url, ROOM, user=ADA)
        await dave.wait_text("draft")
        assert await carol.text() == ""
        assert not carol.state.received_remote
        # y-websocket treats 4400-4499 as permanent: one close, then it gives up.
        assert carol.state.gave_up is not None
        assert len(carol.state.closes) == 1
        await rtc.server.flush()
        assert len(rtc.events("blocked")) == 1
        assert rtc.events("connection_error") == []


async def test_a_destroyed_socket_is_one_error_and_its_presence_vanishes(
    tmp_path: Path,
) -> None:
    async with serve_rtc(tmp_path) as rtc, NodeClients() as node:
        ada = await node.open(rtc.url, ROOM, user=ADA)
        bob = await node.open(rtc.url, ROOM, user=BOB)
        await ada.wait_awareness(lambda s: bob.client_id in s)
        await bob.terminate()
        with anyio.fail_after(1.0):
            await ada.wait_awareness(lambda s: bob.client_id not in s)
        error = await rtc.wait_event("connection_error", session_id=bob.client_id)
        assert error.props["error_code"] == "abnormal-closure"
        await rtc.server.flush()
        assert len(rtc.events("connection_error")) == 1


async def test_a_lone_client_stays_connected_past_the_y_websocket_watchdog(
    tmp_path: Path,
) -> None:
    async with serve_rtc(tmp_path) as rtc, NodeClients(timeout=TIMEOUT + 40) as node:
        ada = await node.open(rtc.url, ROOM, user=ADA)
        await ada.wait_synced()
        # y-websocket closes a socket that received nothing for 30 s; elapsed time is the
        # very thing under test here, not a wait for something.
        await anyio.sleep(35.5)  # noqa: sleep-ok
        status = await ada.status()
        assert status["status"] == "connected"
        assert ada.state.closes == []
        assert rtc.events("leave") == []


async def test_the_document_survives_a_server_restart(tmp_path: Path) -> None:
    async with NodeClients() as node:
        async with serve_rtc(tmp_path) as rtc:
            ada = await node.open(rtc.url, ROOM, user=ADA)
            witness = await node.open(rtc.url, ROOM, user=BOB)
            await ada.insert(0, "kept across restarts")
            await witness.wait_text("kept across restarts")  # the server has applied it
            await ada.close()
            await witness.close()
        async with serve_rtc(tmp_path) as rtc:
            bob = await node.open(rtc.url, ROOM, user=BOB)
            await bob.wait_text("kept across restarts")


async def test_a_network_blip_brings_presence_back_at_once_as_a_reconnect(
    tmp_path: Path,
) -> None:
    async with serve_rtc(tmp_path) as rtc, NodeClients() as node:
        ada = await node.open(rtc.url, ROOM, user=ADA)
        bob = await node.open(rtc.url, ROOM, user=BOB)
        await ada.wait_awareness(lambda s: bob.client_id in s)
        await bob.terminate(reconnect=True)
        await ada.wait_awareness(lambda s: bob.client_id not in s)
        # Well before y-websocket's 15 s awareness renewal: the server makes the reconnecting
        # doc outbid its own removal.
        with anyio.fail_after(5.0):
            await ada.wait_awareness(lambda s: bob.client_id in s)
        join = await rtc.wait_event("join", session_id=bob.client_id, reconnect=True)
        assert join.props["session_count"] == 2
