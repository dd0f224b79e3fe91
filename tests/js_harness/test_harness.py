"""The Node client harness (tests/jsclient.py) against the reference @y/websocket-server.

These pin down how the real y-websocket client and the reference server behave, so the
same checks can be pointed at our server: swap the ``rooms_url`` fixture.
"""

from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from websockets.asyncio.server import ServerConnection, serve

from tests.jsclient import TIMEOUT, CloseEvent, JsClient, NodeClients, reference_server

pytestmark = [pytest.mark.node, pytest.mark.slow]

ROOM = "7/42"
ADA = {"id": 1, "name": "Ada"}
BOB = {"id": 2, "name": "Bob"}


@pytest.fixture
async def rooms_url() -> AsyncIterator[str]:
    async with reference_server() as base:
        yield f"{base}/rooms"


def user_of(client: JsClient, states: dict[int, Any]) -> object:
    state = states.get(client.client_id)
    return state["collaboratorInfo"]["id"] if isinstance(state, dict) else None


async def test_two_docs_converge(rooms_url: str) -> None:
    async with NodeClients() as node:
        ada = await node.open(rooms_url, ROOM, user=ADA)
        bob = await node.open(rooms_url, ROOM, user=BOB)
        await ada.wait_synced()
        await bob.wait_synced()

        await ada.insert(0, "hello")
        await bob.wait_text("hello")
        await bob.insert(5, " world")
        await ada.wait_text("hello world")

        # Concurrent inserts at the same index: both sides end with the same merge.
        await ada.insert(0, "A")
        await bob.insert(0, "B")
        await ada.wait_for(lambda state: len(state.text) == 13)
        await bob.wait_for(lambda state: len(state.text) == 13)
        assert await ada.text() == await bob.text()
        assert ada.state.received_remote
        assert bob.state.received_remote


async def test_late_joiner_gets_document_and_everyone_present(rooms_url: str) -> None:
    async with NodeClients() as node:
        ada = await node.open(rooms_url, ROOM, user=ADA)
        await ada.insert(0, "draft")
        await ada.wait_synced()
        bob = await node.open(rooms_url, ROOM, user=BOB)

        await bob.wait_text("draft")
        states = await bob.wait_awareness(lambda states: ada.client_id in states)
        assert user_of(ada, states) == ADA["id"]


async def test_awareness_reaches_the_other_keyed_by_client_id(rooms_url: str) -> None:
    async with NodeClients() as node:
        ada = await node.open(rooms_url, ROOM, user=ADA)
        bob = await node.open(rooms_url, ROOM, user=BOB)

        seen_by_ada = await ada.wait_awareness(lambda states: bob.client_id in states)
        seen_by_bob = await bob.wait_awareness(lambda states: ada.client_id in states)

        assert ada.client_id != bob.client_id
        assert user_of(bob, seen_by_ada) == BOB["id"]
        assert user_of(ada, seen_by_bob) == ADA["id"]
        # The clientID the peer sees is the one the client itself uses.
        assert ada.client_id in await ada.awareness()
        assert seen_by_bob[ada.client_id] == (await ada.awareness())[ada.client_id]

        await bob.set_awareness_field("cursor", {"index": 3})
        states = await ada.wait_awareness(
            lambda states: states.get(bob.client_id, {}).get("cursor") == {"index": 3}
        )
        assert user_of(bob, states) == BOB["id"]


async def test_terminate_removes_presence_from_the_other_side(rooms_url: str) -> None:
    async with NodeClients() as node:
        ada = await node.open(rooms_url, ROOM, user=ADA)
        bob = await node.open(rooms_url, ROOM, user=BOB)
        await bob.wait_awareness(lambda states: ada.client_id in states)

        await ada.terminate()

        # The issue asks for "within a second" of our server; the reference server does it at once.
        with anyio.fail_after(TIMEOUT / 10):
            await bob.wait_awareness(lambda states: ada.client_id not in states)
        code, reason = await ada.wait_closed()
        assert (code, reason) == (1006, "")
        await ada.wait_status("disconnected")
        assert not ada.state.synced


async def test_disconnect_then_reconnect_keeps_the_client_id(rooms_url: str) -> None:
    async with NodeClients() as node:
        ada = await node.open(rooms_url, ROOM, user=ADA)
        bob = await node.open(rooms_url, ROOM, user=BOB)
        await bob.wait_awareness(lambda states: ada.client_id in states)

        await ada.disconnect()
        # disconnect() announces awareness null (at its current clock) before a clean close.
        await bob.wait_awareness(lambda states: ada.client_id not in states)
        assert ada.state.closes[-1].local
        await bob.insert(0, "while you were away")

        await ada.reconnect()
        await ada.wait_text("while you were away")
        await ada.wait_synced()

        # On reconnect y-websocket re-sends its state at the *same* clock, which y-protocols
        # (server and peers alike) ignore: the presence only comes back with the next clock,
        # here a cursor move, otherwise the 15 s renewal. So the first state bob sees again
        # already has the cursor.
        await ada.set_awareness_field("cursor", 1)
        states = await bob.wait_awareness(lambda states: ada.client_id in states)
        assert states[ada.client_id]["cursor"] == 1


async def test_default_awareness_state_is_clock_zero_and_not_forwarded(rooms_url: str) -> None:
    async with NodeClients() as node:
        # No user: the provider keeps Awareness' constructor state {} at clock 0, and
        # y-protocols only applies clocks above the 0 it assumes for an unknown client.
        anon = await node.open(rooms_url, ROOM)
        await anon.wait_synced()
        bob = await node.open(rooms_url, ROOM, user=BOB)
        await anon.wait_awareness(lambda states: bob.client_id in states)

        await anon.set_awareness_field("cursor", 1)
        states = await bob.wait_awareness(lambda states: anon.client_id in states)
        # Had {} been forwarded, bob would have seen it first (one ordered connection).
        assert states[anon.client_id] == {"cursor": 1}


async def test_unconnected_client_receives_nothing(rooms_url: str) -> None:
    async with NodeClients() as node:
        ada = await node.open(rooms_url, ROOM, user=ADA)
        await ada.insert(0, "secret")
        idle = await node.open(rooms_url, ROOM, user=BOB, connect=False)
        # Barrier: ada synced after her insert was sent, and a third client fetched it.
        await ada.wait_synced()
        probe = await node.open(rooms_url, ROOM)
        await probe.wait_text("secret")

        summary = await idle.status()
        assert summary["status"] == "disconnected"
        assert summary["receivedRemote"] is False
        assert summary["text"] == ""


@pytest.mark.parametrize(("code", "retries"), [(4429, False), (4499, False), (4500, True)])
async def test_close_code_decides_whether_y_websocket_reconnects(code: int, retries: bool) -> None:
    # y-websocket 3.1's default shouldReconnect: 4400-4499 is permanent, all else transient.
    connections = 0
    second = anyio.Event()

    async def close_at_once(websocket: ServerConnection) -> None:
        nonlocal connections
        connections += 1
        if connections == 2:
            second.set()
        await websocket.close(code, "go away")

    async with serve(close_at_once, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        async with NodeClients() as node:
            client = await node.open(f"ws://127.0.0.1:{port}/rooms", ROOM, user=ADA)
            assert await client.wait_closed() == (code, "go away")
            if retries:
                with anyio.fail_after(TIMEOUT):
                    await second.wait()
                assert client.state.gave_up is None
            else:
                # The `closed` event comes with shouldConnect already false, which turns
                # the reconnect timer that closeWebsocketConnection still schedules into a no-op.
                await client.wait_for(lambda state: state.gave_up is not None)
                assert client.state.gave_up == CloseEvent(code, "go away", local=False)
                assert (await client.status())["shouldConnect"] is False
