"""Issue 12, item 1 (layers b and c): one event the SQLite store cannot hold never stops a
server's recording. Joins and leaves recorded after it are written, during the run and
after a restart with that event spooled on disk.

The server records to its own SQLite store, as `rtc serve` does (with its spool in the
data directory), and to a ``memory:`` recorder the test waits on. The bad event (ids
beyond SQLite's 64-bit INTEGER) is recorded straight into the server's SQLite recorder:
the validation where events are made (layer a) refuses it at the door, and these are
the layers below it, which must hold whatever gets through.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import anyio
import httpx

from rtc import RtcServer, ServerConfig
from tests.rtc.clients import TIMEOUT, RawClient
from tracks import Event, MemoryRecorder, read_events
from tracks.spool import Spool

BLOG, POST = 7, 42


def configure(data_dir: Path) -> ServerConfig:
    return ServerConfig(
        data_dir=data_dir,
        port=0,
        room_grace=0.05,
        store_flush_interval=0.01,
        recorders=(f"sqlite://{data_dir / 'events.sqlite'}", "memory:"),
    )


def poison() -> Event:
    return Event(
        "jetpack_rtc_join",
        {"blog_id": BLOG, "post_id": POST, "session_id": 2**63, "wp_user_id": 2**70},
    )


async def join_and_leave(server: RtcServer, session_id: int) -> list[Event]:
    """A client joins the room and leaves; the join and leave events the server recorded."""
    memory = server.recorders[1]
    assert isinstance(memory, MemoryRecorder)

    def recorded(kind: str) -> Event | None:
        for event in memory.events:
            if event.name == f"jetpack_rtc_{kind}" and event.props.get("session_id") == session_id:
                return event
        return None

    async with RawClient.connect(f"{server.ws_url}/{BLOG}/{POST}") as client:
        await client.join(session_id, user=5)
        await client.barrier()
    with anyio.fail_after(TIMEOUT):
        await memory.wait_for(
            lambda e: e.name == "jetpack_rtc_leave" and e.props.get("session_id") == session_id
        )
    events = [recorded("join"), recorded("leave")]
    assert None not in events
    return [event for event in events if event is not None]


def stored(data_dir: Path) -> set[str]:
    return {event.event_id for event in read_events(data_dir / "events.sqlite")}


def dead_letters(data_dir: Path) -> list[Event]:
    path = data_dir / "spool" / "recorder-0" / "dead-letter.jsonl"
    return [Event.from_json(json.loads(line)) for line in path.read_bytes().splitlines()]


async def test_a_bad_event_does_not_stop_the_joins_and_leaves_after_it(tmp_path: Path) -> None:
    bad = poison()
    async with RtcServer(configure(tmp_path)) as server:
        store = server.recorders[0]
        store.record(bad)
        with anyio.fail_after(TIMEOUT):
            await store.flush()
        first = await join_and_leave(server, 111)
        second = await join_and_leave(server, 222)
        with anyio.fail_after(TIMEOUT):
            await server.flush()
        assert {event.event_id for event in first + second} <= stored(tmp_path)
        stats = store.stats
        async with httpx.AsyncClient() as client:
            with anyio.fail_after(TIMEOUT):
                metrics = (await client.get(f"{server.http_url}/metrics")).text
    assert (stats.dead_lettered, stats.spooled, stats.dropped) == (1, 0, 0)
    assert 'rtc_recorder_dead_lettered_total{recorder="0:sqlite:' in metrics
    assert any(
        line.startswith("rtc_recorder_dead_lettered_total") and line.endswith(" 1.0")
        for line in metrics.splitlines()
    ), metrics
    assert dead_letters(tmp_path) == [bad]


async def test_whatever_the_ingest_lets_through_joins_and_leaves_are_still_written(
    tmp_path: Path,
) -> None:
    # Through the front door: the ingest may refuse the event (layer a) or pass it on; either
    # way, recording goes on.
    props = {"blog_id": BLOG, "post_id": POST, "session_id": 2**63, "wp_user_id": 2**70}
    event = {"name": "jetpack_rtc_connection_error", "ts": int(time.time() * 1000),
             "props": {**props, "error_code": "dns-failure"}}
    async with RtcServer(configure(tmp_path)) as server:
        async with httpx.AsyncClient(timeout=TIMEOUT) as http:
            answer = await http.post(f"{server.http_url}/api/events", json={"events": [event]})
        assert answer.status_code < 500
        with anyio.fail_after(TIMEOUT):
            await server.recorders[0].flush()
        events = await join_and_leave(server, 444)
        with anyio.fail_after(TIMEOUT):
            await server.flush()
        assert {event.event_id for event in events} <= stored(tmp_path)
        assert server.recorders[0].stats.spooled == 0


async def test_a_restart_with_a_bad_batch_spooled_recovers(tmp_path: Path) -> None:
    # What an earlier run left: a batch with the bad event in it, and one after it.
    spool = Spool(tmp_path / "spool" / "recorder-0")
    bad = poison()
    left = [
        Event("jetpack_rtc_join", {"blog_id": BLOG, "post_id": POST, "session_id": n})
        for n in (1, 2, 3)
    ]
    spool.append([left[0], bad, left[1]])
    spool.append([left[2]])
    async with RtcServer(configure(tmp_path)) as server:
        events = await join_and_leave(server, 333)
        with anyio.fail_after(TIMEOUT):
            await server.flush()
        assert {event.event_id for event in left + events} <= stored(tmp_path)
    assert dead_letters(tmp_path) == [bad]
    assert sorted(path.name for path in spool.directory.iterdir()) == ["dead-letter.jsonl"]
