"""The browser client (demo/src/rtc-tracks.js) in headless Chromium against a real `rtc serve`.

Arrival is awaited on the server's live event feed (``/events``), which publishes each
accepted event as it is recorded; the store is read after the server flushed it on SIGTERM.
Every wait is bounded (`anyio.fail_after`, Playwright timeouts).
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest
from playwright.async_api import BrowserContext, Page, Request, Route, WebSocketRoute
from websockets.asyncio.client import connect

from tests.demo.harness import TIMEOUT, TIMEOUT_MS, ServerFactory, stop
from tests.rtc.processes import ServerProcess
from tracks import Event

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

BLOG, POST = 1, 2
EVENTS_PATH = re.compile(r"/api/events$")


@asynccontextmanager
async def feed(
    server: ServerProcess,
) -> AsyncIterator[anyio.abc.ObjectReceiveStream[dict[str, object]]]:
    """The room's live events, as parsed JSON, from a WebSocket opened now."""
    send, receive = anyio.create_memory_object_stream[dict[str, object]](1000)
    url = f"{server.ws_url}/events?blog_id={BLOG}&post_id={POST}"
    async with connect(url) as socket, anyio.create_task_group() as group:

        async def pump() -> None:
            async for message in socket:
                await send.send(json.loads(message))

        group.start_soon(pump)
        yield receive
        group.cancel_scope.cancel()


async def arrived(events: anyio.abc.ObjectReceiveStream[dict[str, object]], ids: set[str]) -> None:
    """Wait until the feed has shown every event id in ``ids``."""
    missing = set(ids)
    with anyio.fail_after(TIMEOUT):
        while missing:
            missing.discard(str((await events.receive()).get("event_id")))


async def tracker_page(context: BrowserContext, server: ServerProcess, options: str) -> Page:
    """A page of the server's origin with `window.tracker = createTracker(options)`."""
    page = await context.new_page()
    await page.goto(f"{server.http_url}/healthz")
    await page.evaluate(
        f"""async () => {{
            const {{ createTracker }} = await import('/demo/src/rtc-tracks.js')
            window.tracker = createTracker({options})
            await window.tracker.ready
        }}"""
    )
    return page


SUBMIT = """([count, blog, post]) => Array.from({ length: count }, (_, n) =>
    window.tracker.connectionError({
        blog_id: blog, post_id: post, session_id: 1000 + n, wp_user_id: 7,
        error_code: 'connect-failed', close_code: 1006
    }))"""


async def submit(page: Page, count: int) -> list[str]:
    """``count`` connection errors of sessions 1000, 1001, ...; their event ids."""
    ids: list[str] = await page.evaluate(SUBMIT, [count, BLOG, POST])
    return ids


def posts_to_events(page: Page) -> list[list[str]]:
    """The event ids of every fetch POST to /api/events, as they are made (not beacons)."""
    batches: list[list[str]] = []

    def seen(request: Request) -> None:
        if request.method == "POST" and EVENTS_PATH.search(request.url):
            body = json.loads(request.post_data or "{}")
            batches.append([event["event_id"] for event in body["events"]])

    page.on("request", seen)
    return batches


def stored_once(events: list[Event], ids: list[str]) -> None:
    stored = [event for event in events if event.event_id in set(ids)]
    assert sorted(event.event_id for event in stored) == sorted(ids)
    for event in stored:
        assert event.name == "jetpack_rtc_connection_error"
        assert event.props["origin"] == "client"
        assert event.props["blog_id"] == BLOG


async def test_batches_arrive(start_server: ServerFactory, context: BrowserContext) -> None:
    async with start_server() as server:
        page = await tracker_page(context, server, "{ batchSize: 3, flushIntervalMs: 0 }")
        batches = posts_to_events(page)
        async with feed(server) as events:
            ids = await submit(page, 7)
            await page.evaluate("() => window.tracker.flush()")
            await arrived(events, set(ids))
        # Two full batches went as they filled, the rest on flush(), in order.
        assert batches == [ids[0:3], ids[3:6], ids[6:7]]
        stats = await page.evaluate("() => window.tracker.stats()")
        counts = (stats["sent"], stats["accepted"], stats["duplicates"], stats["queued"])
        assert counts == (7, 7, 0, 0)
        stored_once(await stop(server), ids)


async def test_page_hide_sends_the_pending_batch_by_beacon(
    start_server: ServerFactory, context: BrowserContext
) -> None:
    async with start_server() as server:
        page = await tracker_page(context, server, "{ batchSize: 50, flushIntervalMs: 0 }")
        batches = posts_to_events(page)
        async with feed(server) as events:
            ids = await submit(page, 2)
            assert (await page.evaluate("() => window.tracker.stats()"))["queued"] == 2
            # Leaving the page fires pagehide; only a beacon can still send the pending batch.
            await page.goto(f"{server.http_url}/healthz?next")
            await arrived(events, set(ids))
        assert batches == []  # no fetch: it was the beacon
        stored_once(await stop(server), ids)


async def test_a_failed_post_is_retried_without_duplicates(
    start_server: ServerFactory, context: BrowserContext
) -> None:
    async with start_server() as server:
        page = await tracker_page(
            context, server, "{ batchSize: 50, flushIntervalMs: 0, retry: { baseDelayMs: 20 } }"
        )
        batches = posts_to_events(page)
        failed = anyio.Event()

        async def lose_the_first_answer(route: Route) -> None:
            if failed.is_set():
                await route.continue_()
                return
            # The server stores the batch, but the page sees a 503: it must send it again.
            await route.fetch()
            failed.set()
            await route.fulfill(status=503, headers={"Retry-After": "0"}, body="")

        await page.route(EVENTS_PATH, lose_the_first_answer)
        async with page.expect_response(
            lambda response: bool(EVENTS_PATH.search(response.url)) and response.status == 202,
            timeout=TIMEOUT_MS,
        ) as second:
            ids = await submit(page, 3)
            await page.evaluate("() => window.tracker.flush()")
        answer = await (await second.value).json()
        assert answer["accepted"] == 0
        assert answer["duplicates"] == 3
        assert batches == [ids, ids]  # the same event ids both times
        stats = await page.evaluate("() => window.tracker.stats()")
        assert (stats["retries"], stats["duplicates"], stats["queued"]) == (1, 3, 0)
        stored_once(await stop(server), ids)


async def test_the_demo_reports_a_socket_the_server_never_saw(
    start_server: ServerFactory, context: BrowserContext
) -> None:
    async with start_server() as server:
        page = await context.new_page()
        attempts = anyio.Event()
        count = 0

        async def refuse(socket: WebSocketRoute) -> None:
            # Never connected to the server: to the page, the socket dies before it opens.
            nonlocal count
            count += 1
            await socket.close(code=1006)
            if count == 3:
                attempts.set()

        await page.route_web_socket(re.compile(r"/rooms/"), refuse)
        async with feed(server) as events:
            query = f"blog={BLOG}&post={POST}&user=7&name=Ada&flush_ms=50"
            await page.goto(f"{server.http_url}/?{query}")
            with anyio.fail_after(TIMEOUT):
                await attempts.wait()
                received = await events.receive()
            session_id = await page.evaluate("() => window.rtcDemo.doc.clientID")
        assert received["name"] == "jetpack_rtc_connection_error"
        props = received["props"]
        assert isinstance(props, dict)
        assert props == {
            "blog_id": BLOG,
            "post_id": POST,
            "session_id": session_id,  # the same session id the server would have used
            "wp_user_id": 7,
            "error_code": "connect-failed",
            "close_code": 1006,
            "origin": "client",
        }
        # Once per outage, however often y-websocket retried.
        stored = [e for e in await stop(server) if e.name == "jetpack_rtc_connection_error"]
        assert [event.event_id for event in stored] == [received["event_id"]]
