"""The /stats page in Debian's headless Chromium against a real in-process server.

The event store is seeded with a known day before the server starts; one live client makes
"active now" non-zero. Every wait is a Playwright `expect` (bounded) or `anyio.fail_after`.
"""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest
from playwright.async_api import BrowserContext, async_playwright, expect

from rtc import RtcServer, ServerConfig
from rtc.auth import Scope, issue_scoped
from tests.demo.harness import CHROMIUM_ARGS, TIMEOUT_MS
from tests.rtc.clients import RawClient
from tracks import Event
from tracks.presence.sqlite_schema import connect, insert_events

pytestmark = [pytest.mark.browser, pytest.mark.slow]

MIN = 60_000


def seed(path: Path) -> None:
    now = time.time_ns() // 1_000_000
    start = now - now % 86_400_000  # today, 00:00 UTC
    events = []
    for index, (post, session, user) in enumerate([(42, 1, 5), (42, 2, 5), (43, 3, 6)]):
        joined = start + index * MIN
        props = {"blog_id": 7, "post_id": post, "session_id": session, "wp_user_id": user}
        events.append(Event("jetpack_rtc_join", props, ts=joined))
        events.append(Event("jetpack_rtc_leave", {**props, "duration_ms": 20 * MIN},
                            ts=joined + 20 * MIN))
    events.append(Event("jetpack_rtc_connection_error", {
        "blog_id": 7, "post_id": 42, "error_code": "ping-timeout", "close_code": 1011,
    }, ts=start + 30 * MIN))
    connection = connect(path)
    try:
        insert_events(connection, events)
    finally:
        connection.close()


async def test_stats_page_shows_live_and_recorded_figures(tmp_path: Path, chromium: Path) -> None:
    seed(tmp_path / "events.sqlite")
    config = ServerConfig(data_dir=tmp_path, port=0, room_grace=0.05, rollup_interval=0)
    async with RtcServer(config) as server, RawClient.connect(f"{server.ws_url}/7/44") as client:
        await client.join(901, user=9)
        await client.barrier()
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=str(chromium), args=CHROMIUM_ARGS, timeout=TIMEOUT_MS
            )
            try:
                page = await browser.new_page()
                await page.goto(f"{server.http_url}/stats?blog_id=7&since=7d")
                await expect(page.get_by_test_id("stats-status")).to_contain_text("Updated")
                await expect(page.locator("#active-sessions")).to_have_text("1")
                await expect(page.get_by_test_id("live-rooms")).to_contain_text("44")
                facts = page.get_by_test_id("facts")
                # 7/44's live join is recorded too: 4 sessions, 3 users, 3 posts.
                await expect(facts.locator("[data-fact='unique sessions'] b")).to_have_text("4")
                await expect(facts.locator("[data-fact='unique users'] b")).to_have_text("3")
                await expect(facts.locator("[data-fact='unique posts'] b")).to_have_text("3")
                await expect(facts.locator("[data-fact='peak sessions'] b")).to_have_text("2")
                chart = page.get_by_test_id("daily-chart")
                await expect(chart.locator("polyline")).to_have_count(3)
                await expect(page.get_by_test_id("duration-chart").locator("rect")).to_have_count(9)
                await expect(page.get_by_test_id("errors")).to_contain_text("ping-timeout")
                await expect(page.get_by_test_id("top-posts")).to_contain_text("42")
                # Live refresh: a second client appears without reloading the page.
                async with RawClient.connect(f"{server.ws_url}/7/44") as second:
                    await second.join(902, user=10)
                    await second.barrier()
                    await expect(page.locator("#active-sessions")).to_have_text("2")
                with anyio.fail_after(TIMEOUT_MS / 1000):
                    await page.screenshot(path=str(tmp_path / "stats.png"), full_page=True)
            finally:
                await browser.close()


@pytest.mark.asyncio(loop_scope="module")  # the module's browser runs in the module's loop
async def test_stats_page_passes_its_token_on_to_a_closed_server(
    tmp_path: Path, context: BrowserContext
) -> None:
    """With --secret the page's API calls carry the page's own ?token= (a read token)."""
    seed(tmp_path / "events.sqlite")
    secret = "s" * 32
    config = ServerConfig(data_dir=tmp_path, port=0, rollup_interval=0, secret=secret)
    token = issue_scoped(secret, scope=Scope.READ, ttl_seconds=600)
    async with RtcServer(config) as server:
        page = await context.new_page()
        try:
            await page.goto(f"{server.http_url}/stats?blog_id=7&since=7d")
            await expect(page.get_by_test_id("stats-status")).to_contain_text("Error")
            await page.goto(f"{server.http_url}/stats?blog_id=7&since=7d&token={token}")
            await expect(page.get_by_test_id("stats-status")).to_contain_text("Updated")
            facts = page.get_by_test_id("facts")
            await expect(facts.locator("[data-fact='unique sessions'] b")).to_have_text("3")
        finally:
            await page.close()
