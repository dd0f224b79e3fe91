"""The server over real sockets on 127.0.0.1, with pycrdt and raw protocol clients."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import anyio
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from rtc.awareness import decode_awareness
from rtc.protocol import AwarenessMessage, SyncStep1, SyncStep2, SyncUpdate

from .clients import TIMEOUT, RawClient, YClient, presence, serve_rtc

pytestmark = pytest.mark.slow


async def get(url: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        return await client.get(url)


def scrape(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text to {(sample name, sorted labels): value}."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_two_documents_converge_and_updates_are_not_echoed(tmp_path: Path) -> None:
    async with (
        serve_rtc(tmp_path) as rtc,
        YClient.connect(rtc.room_url(), 111, user=1) as ada,
        YClient.connect(rtc.room_url(), 222, user=2) as bob,
    ):
        await ada.insert(0, "hello")
        await bob.wait_text("hello")
        await bob.insert(5, " world")
        await ada.wait_text("hello world")
        await bob.wait_text("hello world")


async def test_joins_carry_session_ids_and_the_roster(tmp_path: Path) -> None:
    async with serve_rtc(tmp_path) as rtc:
        async with YClient.connect(rtc.room_url(), 111, user=1), YClient.connect(
            rtc.room_url(), 222, user=1
        ), YClient.connect(rtc.room_url(), 333, user=2):
            join = await rtc.wait_event("join", session_id=333)
            assert join.to_json()["props"] == {
                "blog_id": 7, "post_id": 42, "session_id": 333, "wp_user_id": 2,
                "transport": "websocket", "contributors": [1, 2], "contributor_count": 2,
                "session_count": 3,
            }
            roster = (await get(f"{rtc.server.http_url}/api/rooms/7/42")).json()
            assert roster["contributor_count"] == 2
            assert roster["session_count"] == 3
            assert [
                (c["id"], [s["session_id"] for s in c["sessions"]]) for c in roster["contributors"]
            ] == [(1, [111, 222]), (2, [333])]
            rooms = (await get(f"{rtc.server.http_url}/api/rooms")).json()
            assert rooms == {"rooms": [
                {"blog_id": 7, "post_id": 42, "session_count": 3, "contributor_count": 2}]}
        leave = await rtc.wait_event("leave", session_id=111)
        assert leave.props["clean"] is True
        assert leave.props["updates"] == 0
        assert leave.props["duration_ms"] >= 0


async def test_a_third_user_is_blocked_once_and_never_sees_the_document(tmp_path: Path) -> None:
    async with (
        serve_rtc(tmp_path, max_contributors=2) as rtc,
        YClient.connect(rtc.room_url(), 111, user=1) as ada,
        YClient.connect(rtc.room_url(), 222, user=2),
    ):
        await ada.insert(0, "secret draft")
        for _attempt in range(3):  # a client that retries anyway
            async with RawClient.connect(rtc.room_url()) as carol:
                await carol.join(333, user=3)
                assert await carol.closed() == (4429, "connection-limit-exceeded")
                assert carol.received == []  # neither the document nor anyone's presence
        blocked = await rtc.wait_event("blocked", session_id=333)
        assert blocked.to_json()["props"] == {
            "blog_id": 7, "post_id": 42, "session_id": 333, "wp_user_id": 3,
            "contributors": [1, 2], "contributor_count": 2, "session_count": 2,
            "limit": 2, "limit_kind": "contributors",
        }
        await rtc.server.flush()
        assert len(rtc.events("blocked")) == 1
        assert rtc.events("connection_error") == []


async def test_a_lost_transport_records_one_error_and_removes_presence_at_once(
    tmp_path: Path,
) -> None:
    async with serve_rtc(tmp_path) as rtc, YClient.connect(rtc.room_url(), 111, user=1) as ada:
        async with RawClient.connect(rtc.room_url()) as bob:
            await bob.join(222, user=2)
            await ada.wait(lambda: 222 in ada.states)
            bob.ws.transport.abort()  # no close frame
            await ada.wait(lambda: 222 not in ada.states)
        error = await rtc.wait_event("connection_error", session_id=222)
        assert error.to_json()["props"] == {
            "blog_id": 7, "post_id": 42, "session_id": 222, "wp_user_id": 2,
            "error_code": "abnormal-closure", "close_code": 1006,
        }
        leave = await rtc.wait_event("leave", session_id=222)
        assert leave.props["clean"] is False
    # The barrier: the server has stopped, so every connection's events are in.
    assert rtc.events("connection_error") == [error]
    assert [e.props["session_id"] for e in rtc.events("leave")] == [222, 111]


@pytest.mark.parametrize(
    ("frame", "close_code"),
    [
        (b"\x00\x02\x05\xff\xff\xff\xff\xff", 1002),  # an update that is not a Yjs update
        (b"\x09", 1002),  # unknown message type
        (b"\x00\x02\xff\xff\xff\x7f", 1002),  # huge declared length
        ("hello", 1003),  # text frame
    ],
)
async def test_malformed_input_closes_only_its_connection(
    tmp_path: Path, frame: bytes | str, close_code: int
) -> None:
    async with (
        serve_rtc(tmp_path) as rtc,
        YClient.connect(rtc.room_url(), 111, user=1) as ada,
        YClient.connect(rtc.room_url(), 222, user=2) as bob,
    ):
        await ada.insert(0, "safe")
        await bob.wait_text("safe")
        async with RawClient.connect(rtc.room_url()) as mallory:
            await mallory.join(666, user=6)
            await mallory.barrier()
            await mallory.send(frame)
            code, reason = await mallory.closed()
            assert (code, reason) == (close_code, "protocol-error")
        error = await rtc.wait_event("connection_error", session_id=666)
        assert (error.props["error_code"], error.props["close_code"]) == (
            "protocol-error", close_code)
        await bob.insert(4, "!")
        await ada.wait_text("safe!")
        await rtc.server.flush()
        assert len(rtc.events("connection_error")) == 1


async def test_oversized_frames_close_with_1009(tmp_path: Path) -> None:
    async with serve_rtc(tmp_path, max_message_size=1024) as rtc:
        async with RawClient.connect(rtc.room_url()) as mallory:
            await mallory.join(666, user=6)
            await mallory.barrier()
            await mallory.send(SyncUpdate(b"\x00" * 4096))
            code, _ = await mallory.closed()
            assert code == 1009
        error = await rtc.wait_event("connection_error", session_id=666)
        assert error.props["error_code"] == "message-too-big"


async def test_a_connection_that_never_announces_itself_is_closed(tmp_path: Path) -> None:
    async with serve_rtc(tmp_path, announce_timeout=0.2) as rtc:
        async with RawClient.connect(rtc.room_url()) as silent:
            await silent.send(SyncStep1(b"\x00"))
            assert await silent.closed() == (4408, "announce-timeout")
        error = await rtc.wait_event("connection_error", error_code="announce-timeout")
        assert "session_id" not in error.props


async def test_late_joiner_gets_everyones_presence_and_awareness_is_relayed_once(
    tmp_path: Path,
) -> None:
    async with serve_rtc(tmp_path) as rtc:
        async with RawClient.connect(rtc.room_url()) as ada, RawClient.connect(
            rtc.room_url()
        ) as bob:
            await ada.join(111, user=1)
            await ada.barrier()
            await bob.join(222, user=2)
            first = await bob.recv_until(lambda m: isinstance(m, AwarenessMessage))
            assert {e.client_id for e in decode_awareness(first.payload)} == {111, 222}  # type: ignore[union-attr]
            # ada hears of bob once; her echo of bob's state goes nowhere
            heard = await ada.recv_until(lambda m: isinstance(m, AwarenessMessage))
            assert [e.client_id for e in decode_awareness(heard.payload)] == [222]  # type: ignore[union-attr]
            ada_before, bob_before = len(ada.received), len(bob.received)
            await ada.ws.send(presence(222, 2))
            await ada.barrier()  # the echo was processed before this step 2 was sent
            await bob.barrier()  # and anything it caused for bob was queued before this one
            assert ada.received[ada_before:] == [SyncStep2(b"\x00\x00")]
            assert bob.received[bob_before:] == [SyncStep2(b"\x00\x00")]


async def test_documents_survive_a_restart(tmp_path: Path) -> None:
    async with serve_rtc(tmp_path) as rtc, YClient.connect(rtc.room_url(), 111, 1) as ada:
        await ada.insert(0, "persisted")
        await rtc.server.flush()
    async with serve_rtc(tmp_path) as rtc, YClient.connect(rtc.room_url(), 222, 2) as bob:
        await bob.wait_text("persisted")


async def test_reconnect_of_the_same_session_is_flagged(tmp_path: Path) -> None:
    async with serve_rtc(tmp_path) as rtc:
        async with RawClient.connect(rtc.room_url()) as first:
            await first.join(111, user=1)
            await first.barrier()
            first.ws.transport.abort()
        await rtc.wait_event("leave", session_id=111)
        async with RawClient.connect(rtc.room_url()) as again:
            await again.join(111, user=1)
            await again.barrier()
            joins = [e for e in rtc.events("join") if e.props["session_id"] == 111]
            assert [e.props.get("reconnect") for e in joins] == [None, True]
            assert joins[0].event_id != joins[1].event_id


async def test_http_errors_come_before_any_upgrade(tmp_path: Path) -> None:
    async with serve_rtc(tmp_path) as rtc:
        base = rtc.server.http_url
        missing = await get(f"{base}/nowhere")
        assert missing.status_code == 404
        assert "error" in missing.json()
        bad = await get(f"{base}/rooms/0/x")
        assert bad.status_code == 400
        assert "positive integers" in bad.json()["error"]
        health = (await get(f"{base}/healthz")).json()
        assert health["status"] == "ok"
        assert health["connections"] == 0
        with pytest.raises(InvalidStatus) as refused:
            await connect(f"{rtc.url}/abc/1")
        assert refused.value.response.status_code == 400


async def test_metrics_count_what_happened(tmp_path: Path) -> None:
    async with serve_rtc(tmp_path, max_contributors=1) as rtc:
        async with YClient.connect(rtc.room_url(), 111, user=1) as ada:
            await ada.wait(ada.synced.is_set)
            async with RawClient.connect(rtc.room_url()) as bob:
                await bob.join(222, user=2)
                await bob.closed()
            samples = scrape((await get(f"{rtc.server.http_url}/metrics")).text)
            assert samples["rtc_sessions", ()] == 1
            assert samples["rtc_blocked_total", (("limit_kind", "contributors"),)] == 1
            # Every type is shown from the start at 0: what counts is the value.
            assert samples["rtc_messages_in_total", (("type", "awareness"),)] == 2  # ada, bob
            assert samples["rtc_messages_in_total", (("type", "sync_step1"),)] == 2
            assert samples["rtc_messages_in_total", (("type", "sync_update"),)] == 0
            assert samples["rtc_events_recorded_total", (("name", "jetpack_rtc_join"),)] == 1
            assert samples["rtc_events_recorded_total", (("name", "jetpack_rtc_blocked"),)] == 1


async def test_ten_clients_joining_at_once_all_sync(tmp_path: Path) -> None:
    async with serve_rtc(tmp_path) as rtc, YClient.connect(rtc.room_url(), 1, 1) as seed:
        await seed.insert(0, "seed")
        await seed.wait_text("seed")

        async def join(client_id: int) -> None:
            async with YClient.connect(rtc.room_url(), client_id, client_id) as client:
                await client.wait_text("seed")

        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as tg:
                for client_id in range(100, 110):
                    tg.start_soon(join, client_id)


async def test_a_peer_that_stops_answering_pings_is_closed(tmp_path: Path) -> None:
    async with serve_rtc(tmp_path, ping_interval=0.05, ping_timeout=0.1) as rtc:
        async with RawClient.connect(rtc.room_url(), ping_interval=None) as frozen:
            await frozen.join(555, user=5)
            await frozen.barrier()
            frozen.ws.transport.pause_reading()  # it hears no ping, so it answers none
            error = await rtc.wait_event("connection_error", session_id=555)
            assert (error.props["error_code"], error.props["close_code"]) == ("ping-timeout", 1011)
            frozen.ws.transport.resume_reading()


async def test_post_type_travels_with_the_join(tmp_path: Path) -> None:
    async with serve_rtc(tmp_path) as rtc:
        async with RawClient.connect(rtc.room_url() + "?post_type=page") as ada:
            await ada.join(111, user=1)
            join = await rtc.wait_event("join", session_id=111)
            assert join.props["post_type"] == "page"


async def test_an_unloaded_room_lets_its_document_and_connections_go(tmp_path: Path) -> None:
    """Freed by reference counting, with the cyclic garbage collector off: a room's document
    held through a cycle (yrs holds pycrdt's observer, which holds the document) was never
    freed, and closed connections waited for a full collection with their rooms behind them."""
    from rtc.peers import Peer
    from rtc.room import Room

    def alive(kind: type) -> int:
        return sum(1 for obj in gc.get_objects() if type(obj) is kind)

    gc.collect()
    gc.disable()
    try:
        async with serve_rtc(tmp_path) as rtc:
            rooms = rtc.server.parts.rooms
            async with (
                YClient.connect(rtc.room_url(), 111, user=1) as ada,
                YClient.connect(rtc.room_url(), 222, user=2) as bob,
            ):
                await ada.insert(0, "hello")
                await bob.wait_text("hello")
                [room] = rooms.loaded()
                document = weakref.ref(room.doc)
                del room
            with anyio.fail_after(TIMEOUT):
                while True:  # bounded by the timeout: unloaded after its grace, then freed
                    if document() is None:
                        break
                    # Freeing raises no event to await: the weak reference is the outcome.
                    await anyio.sleep(0.01)  # noqa: sleep-ok
            assert len(rooms) == 0
            assert alive(Room) == 0
            assert alive(Peer) == 0
    finally:
        gc.enable()


async def test_a_closed_connection_is_freed_without_the_cycle_collector(tmp_path: Path) -> None:
    """With the cyclic garbage collector off, the server's side of a closed connection goes
    at once (by reference counting): websockets' finished parser and the selector transport
    each held themselves in a cycle, so under churn thousands of closed connections, with
    their buffers, waited for a full collection."""
    from rtc.delivery import DeliveringConnection

    def server_side() -> list[DeliveringConnection]:
        # type() and not isinstance(): weak proxies pass as what they point to
        return [obj for obj in gc.get_objects() if issubclass(type(obj), DeliveringConnection)]

    gc.collect()
    gc.disable()
    try:
        async with serve_rtc(tmp_path) as rtc, RawClient.connect(rtc.room_url()) as stay:
            await stay.join(1, user=1)
            before = {id(connection) for connection in server_side()}
            closed: list[weakref.ref[object]] = []  # each one's connection, protocol, transport
            for session in range(2, 7):
                async with RawClient.connect(rtc.room_url()) as leaving:
                    await leaving.join(session, user=session)
                    [connection] = [c for c in server_side() if id(c) not in before]
                    parts = (connection, connection.protocol, connection.transport)
                    closed += [weakref.ref(part) for part in parts]
                    del connection, parts
                await rtc.wait_event("leave", session_id=session)
            with anyio.fail_after(TIMEOUT):
                while True:  # bounded by the timeout
                    if all(ref() is None for ref in closed):
                        break
                    # Freeing raises no event to await: the weak references are the outcome.
                    await anyio.sleep(0.01)  # noqa: sleep-ok
    finally:
        gc.enable()
