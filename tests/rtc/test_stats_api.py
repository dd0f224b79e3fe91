"""`GET /api/stats`, `/api/stats/live` and `/stats` against a real server, real clients and
its real SQLite event store; the JSON must equal `tracks report --json`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from websockets.asyncio.client import connect

from rtc import RtcServer, ServerConfig
from tests.rtc.clients import TIMEOUT, RawClient
from tracks import Event
from tracks.cli import main as tracks_main
from tracks.presence.sqlite_schema import connect as connect_store
from tracks.presence.sqlite_schema import insert_events

pytestmark = pytest.mark.slow


async def get(server: RtcServer, path: str) -> tuple[int, Any]:
    async with httpx.AsyncClient(base_url=server.http_url) as client:
        with anyio.fail_after(TIMEOUT):
            response = await client.get(path)
    content_type = response.headers["content-type"]
    return response.status_code, response.json() if "json" in content_type else response.text


async def test_stats_api_live_and_page(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = ServerConfig(
        data_dir=tmp_path, port=0, room_grace=0.05, store_flush_interval=0.01,
        max_contributors=2, rollup_interval=0,
    )
    async with RtcServer(config) as server:
        room = f"{server.ws_url}/7/42"
        feed_url = server.ws_url.replace("/rooms", "/events?blog_id=7&post_id=42")
        with anyio.fail_after(TIMEOUT):
            feed = await connect(feed_url)
        async with (
            RawClient.connect(room) as tab1,
            RawClient.connect(room) as tab2,
            RawClient.connect(room) as other,
            RawClient.connect(f"{server.ws_url}/7/43") as elsewhere,
        ):
            await tab1.join(101, user=1)
            await tab2.join(102, user=1)  # a second tab of a user already present
            await other.join(103, user=4)
            await elsewhere.join(201, user=2)
            for client in (tab1, tab2, other, elsewhere):
                await client.barrier()

            status, live = await get(server, "/api/stats/live")
            assert status == 200
            assert live == {
                "active_sessions": 4,
                "active_contributors": 3,
                "rooms": [
                    {"blog_id": 7, "post_id": 42, "sessions": 3, "contributors": 2},
                    {"blog_id": 7, "post_id": 43, "sessions": 1, "contributors": 1},
                ],
            }
            assert (await get(server, "/api/stats/live?post_id=43&blog_id=7"))[1][
                "active_sessions"
            ] == 1

            async with RawClient.connect(room) as third:
                await third.join(301, user=3)
                assert (await third.closed())[0] == 4429

            await tab2.ws.close()
            with anyio.fail_after(TIMEOUT):
                while True:  # bounded by the timeout: read the feed until tab 2's leave
                    event = json.loads(await feed.recv())
                    if event["name"].endswith("_leave") and event["props"]["session_id"] == 102:
                        break
            await server.flush()

            status, stats = await get(server, "/api/stats?blog_id=7&since=2d")
            assert status == 200
            assert (stats["joins"], stats["unique_sessions"], stats["unique_users"]) == (4, 4, 3)
            assert (stats["unique_posts"], stats["sessions_per_user"]) == (2, 1.333)
            assert (stats["peak_concurrent_sessions"], stats["peak_concurrent_users"]) == (3, 2)
            assert (stats["blocked"], stats["blocked_rate"]) == (1, 0.2)
            assert stats["session_duration_ms"]["p50"] is not None
            assert stats["top_posts"] == [
                {"blog_id": 7, "post_id": 42, "unique_sessions": 3},
                {"blog_id": 7, "post_id": 43, "unique_sessions": 1},
            ]
            assert len(stats["daily"]) == 2  # yesterday and today

            # The same JSON from the command line, and after a rollup.
            store = str(tmp_path / "events.sqlite")
            assert tracks_main(["report", store, "--blog-id", "7", "--since", "2d", "--json"]) == 0
            assert json.loads(capsys.readouterr().out) == stats
            await server.stats.roll_up()
            assert (await get(server, "/api/stats?blog_id=7&since=2d"))[1] == stats

            assert (await get(server, "/api/stats?blog_id=x"))[0] == 400
            assert (await get(server, "/api/stats?post_id=3"))[0] == 400
            assert (await get(server, "/api/stats?since=soon"))[0] == 400
            status, page = await get(server, "/stats")
            assert status == 200
            assert "/api/stats" in page
        await feed.close()


async def test_serve_rolls_up_at_start_and_prunes_past_retention(tmp_path: Path) -> None:
    now = time.time_ns() // 1_000_000
    old = now - 100 * 86_400_000
    props = {"blog_id": 7, "post_id": 42, "session_id": 1, "wp_user_id": 5}
    store = connect_store(tmp_path / "events.sqlite")
    insert_events(store, [
        Event("jetpack_rtc_join", props, ts=old),
        Event("jetpack_rtc_leave", {**props, "duration_ms": 60_000}, ts=old + 60_000),
        Event("jetpack_rtc_join", {**props, "session_id": 2}, ts=now - 1000),
    ])
    store.close()
    config = ServerConfig(data_dir=tmp_path, port=0, rollup_interval=3600, retention_days=90)
    async with RtcServer(config) as server:
        with anyio.fail_after(TIMEOUT):
            await server.stats.rolled_up(1)
        status, stats = await get(server, "/api/stats?since=101d")
        assert status == 200
        assert (stats["joins"], stats["unique_sessions"], stats["unique_users"]) == (2, 2, 1)
        assert stats["session_duration_ms"]["p50"] == pytest.approx(60_000, rel=0.01)
    store = connect_store(tmp_path / "events.sqlite")
    try:  # the old raw events are gone; their rollups answered above
        assert store.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 1
    finally:
        store.close()
