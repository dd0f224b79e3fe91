"""Presence tracking around pycrdt-websocket, with unmodified y-websocket clients (Node),
served by the `websockets` library and by uvicorn (ASGI)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import pytest
import uvicorn
from pycrdt.websocket import WebsocketServer
from websockets.asyncio.server import serve

from rtc.ids import RoomKey
from rtc.integrations.pycrdt_websocket import PresenceServer, RoomOf, room_from_path
from rtc.integrations.roster import Roster
from rtc.limits import RoomLimits
from tests.jsclient import TIMEOUT, NodeClients
from tracks import Event, MemoryRecorder

ROOM = "7/42"
KEY = RoomKey(7, 42)
ADA = {"id": 1, "name": "Ada"}
BOB = {"id": 2, "name": "Bob"}
CAROL = {"id": 3, "name": "Carol"}

node_tests = [pytest.mark.node, pytest.mark.slow]
transports = pytest.mark.parametrize("transport", ["websockets", "uvicorn"])


@dataclass
class Running:
    url: str  # y-websocket's serverUrl: rooms are `{url}/{blog_id}/{post_id}`
    presence: PresenceServer
    recorder: MemoryRecorder

    def events(self, kind: str) -> list[Event]:
        return [e for e in self.recorder.events if e.name == "jetpack_rtc_" + kind]

    async def wait_event(self, kind: str, **props: Any) -> Event:
        def matches(event: Event) -> bool:
            return event.name == "jetpack_rtc_" + kind and all(
                event.props.get(key) == value for key, value in props.items()
            )

        with anyio.fail_after(TIMEOUT):
            return await self.recorder.wait_for(matches)


@asynccontextmanager
async def serve_presence(
    transport: str, *, room_of: RoomOf = room_from_path, **limits: int
) -> AsyncIterator[Running]:
    """A pycrdt-websocket server with presence, on 127.0.0.1:<ephemeral>."""
    recorder = MemoryRecorder()
    server = WebsocketServer()
    presence = PresenceServer(
        server, recorders=[recorder], limits=RoomLimits(**limits), room_of=room_of
    )
    async with server:
        if transport == "websockets":
            async with serve(presence.serve_websockets, "127.0.0.1", 0) as listening:
                port = listening.sockets[0].getsockname()[1]
                yield Running(f"ws://127.0.0.1:{port}/rooms", presence, recorder)
            return
        # Bound and listening before uvicorn starts: clients wait in the backlog, so no
        # readiness poll is needed.
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            sock.listen()
            port = sock.getsockname()[1]
            config = uvicorn.Config(
                presence.asgi(), lifespan="off", log_level="warning", ws="websockets-sansio"
            )
            asgi = uvicorn.Server(config)
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(asgi.serve, [sock])
                try:
                    yield Running(f"ws://127.0.0.1:{port}/rooms", presence, recorder)
                finally:
                    asgi.should_exit = asgi.force_exit = True


# --- pure parts ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/rooms/7/42", (7, 42)),
        ("/rooms/7/42/", None),
        ("/rooms/07/42", None),
        ("/rooms/7", None),
        ("/other/7/42", None),
        ("/rooms/0/42", None),
        (f"/rooms/{2**63}/1", None),
    ],
)
def test_rooms_are_named_like_our_server(path: str, expected: tuple[int, int] | None) -> None:
    assert room_from_path(path) == expected


def test_roster_admits_tabs_of_a_present_user_and_blocks_a_new_one_once() -> None:
    roster = Roster(RoomLimits(max_contributors=1))
    first = roster.admit(KEY, connection=1, session_id=10, user_id=1, name="Ada",
                         connected_at_ms=0, now_ms=1)
    second = roster.admit(KEY, connection=2, session_id=11, user_id=1, name="Ada",
                          connected_at_ms=0, now_ms=2)
    refused = [
        roster.admit(KEY, connection=c, session_id=12, user_id=2, name="Bob",
                     connected_at_ms=0, now_ms=3)
        for c in (3, 4)
    ]
    assert type(first).__name__ == type(second).__name__ == "Joined"
    assert [type(r).__name__ for r in refused] == ["Blocked", "Blocked"]
    assert [getattr(r, "first", None) for r in refused] == [True, False]
    (ada,) = roster.contributors(KEY)
    assert [s.session_id for s in ada.sessions] == [10, 11]
    left = roster.leave(1, now_ms=5, clean=False)
    assert left is not None
    assert left.session.session_id == 10
    assert roster.leave(1, now_ms=6, clean=True) is None
    assert roster.leave(3, now_ms=6, clean=True) is None  # never admitted


# --- real y-websocket clients -------------------------------------------------------------


@transports
@pytest.mark.node
@pytest.mark.slow
async def test_join_carries_the_client_id_and_two_tabs_are_one_contributor(
    transport: str,
) -> None:
    async with serve_presence(transport) as rtc, NodeClients() as node:
        first = await node.open(rtc.url, ROOM, user=ADA, params={"post_type": "page"})
        second = await node.open(rtc.url, ROOM, user=ADA)
        join1 = await rtc.wait_event("join", session_id=first.client_id)
        join2 = await rtc.wait_event("join", session_id=second.client_id)
        assert join1.props["blog_id"] == 7
        assert join1.props["post_id"] == 42
        assert join1.props["post_type"] == "page"
        assert join1.props["wp_user_id"] == join2.props["wp_user_id"] == 1
        # The tabs connect concurrently: either may be admitted second.
        later = join2 if join2.props["session_count"] == 2 else join1
        assert later.props["contributors"] == (1,)
        assert later.props["contributor_count"] == 1
        assert later.props["session_count"] == 2
        (ada,) = rtc.presence.roster.contributors(KEY)
        assert {s.session_id for s in ada.sessions} == {first.client_id, second.client_id}
        # The document is pycrdt-websocket's, and it still syncs.
        await first.insert(0, "hello")
        await second.wait_text("hello")
        # A late joiner sees the others' presence at once, not at their 15 s renewal.
        third = await node.open(rtc.url, ROOM, user=BOB)
        await third.wait_awareness(lambda s: {first.client_id, second.client_id} <= set(s))


@transports
@pytest.mark.node
@pytest.mark.slow
async def test_a_third_user_is_closed_with_4429_before_anything_is_sent(transport: str) -> None:
    async with serve_presence(transport, max_contributors=2) as rtc, NodeClients() as node:
        ada = await node.open(rtc.url, ROOM, user=ADA)
        bob = await node.open(rtc.url, ROOM, user=BOB)
        await ada.wait_synced()
        await bob.wait_synced()
        await ada.insert(0, "draft")
        await bob.wait_text("draft")
        carol = await node.open(rtc.url, ROOM, user=CAROL)
        assert await carol.wait_closed() == (4429, "connection-limit-exceeded")
        blocked = await rtc.wait_event("blocked", session_id=carol.client_id)
        assert blocked.props["wp_user_id"] == 3
        assert blocked.props["limit"] == 2
        assert blocked.props["limit_kind"] == "contributors"
        assert blocked.props["contributors"] == (1, 2)
        # Barrier: a later joiner is admitted and synced, so anything carol's connection
        # could have caused has been processed by now.
        dave = await node.open(rtc.url, ROOM, user=ADA)
        await dave.wait_text("draft")
        await rtc.wait_event("join", session_id=dave.client_id)
        assert await carol.text() == ""
        assert not carol.state.received_remote
        assert set(await carol.awareness()) == {carol.client_id}  # nobody's presence
        assert carol.state.gave_up is not None
        assert len(carol.state.closes) == 1
        assert len(rtc.events("blocked")) == 1
        assert rtc.events("connection_error") == []
        assert carol.client_id not in {
            s.session_id for c in rtc.presence.roster.contributors(KEY) for s in c.sessions
        }


@transports
@pytest.mark.node
@pytest.mark.slow
async def test_an_abrupt_close_is_one_error_and_its_presence_vanishes_at_once(
    transport: str,
) -> None:
    async with serve_presence(transport) as rtc, NodeClients() as node:
        ada = await node.open(rtc.url, ROOM, user=ADA)
        bob = await node.open(rtc.url, ROOM, user=BOB)
        await ada.wait_awareness(lambda s: bob.client_id in s)
        await bob.terminate()
        with anyio.fail_after(1.0):
            await ada.wait_awareness(lambda s: bob.client_id not in s)
        # leave is recorded before connection_error: once the error is in, both are.
        error = await rtc.wait_event("connection_error", session_id=bob.client_id)
        assert error.props["error_code"] == "abnormal-closure"
        assert error.props["close_code"] == 1006
        assert error.props["wp_user_id"] == 2
        (leave,) = rtc.events("leave")
        assert leave.props["session_id"] == bob.client_id
        assert leave.props["clean"] is False
        assert len(rtc.events("connection_error")) == 1
        # A clean goodbye is a clean leave and no error.
        await ada.close()
        await rtc.wait_event("leave", session_id=ada.client_id, clean=True)
        assert len(rtc.events("connection_error")) == 1


@transports
@pytest.mark.node
@pytest.mark.slow
async def test_rooms_can_be_named_by_a_function_of_the_path(transport: str) -> None:
    def room_of(path: str) -> tuple[int, int] | None:
        prefix = "/rooms/notebook-"
        return (5, int(path[len(prefix):])) if path.startswith(prefix) else None

    async with serve_presence(transport, room_of=room_of) as rtc, NodeClients() as node:
        ada = await node.open(rtc.url, "notebook-9", user=ADA)
        join = await rtc.wait_event("join", session_id=ada.client_id)
        assert (join.props["blog_id"], join.props["post_id"]) == (5, 9)
        stray = await node.open(rtc.url, ROOM, user=BOB)
        assert await stray.wait_closed() == (4404, "unknown-room")


def test_exports_and_the_roster_is_pure() -> None:
    import rtc.integrations.pycrdt_websocket as integration
    from tests.module_imports import imports_of

    assert sorted(integration.__all__) == [
        "AsgiTransport", "CloseFrame", "PresenceASGIServer", "PresenceServer", "RoomOf",
        "Transport", "WebsocketsTransport", "room_from_path",
    ]
    assert all(hasattr(integration, name) for name in integration.__all__)
    io = {"anyio", "asyncio", "websockets", "pycrdt", "socket", "sqlite3"}
    assert not {name.split(".")[0] for name in imports_of("rtc.integrations.roster")} & io
    assert not imports_of("rtc.integrations")  # importing the package imports no host library
