"""The browser client honours capture control: headless Chromium against a real `rtc serve`.

A blog switched off (``PUT /api/capture/{blog}``) gets no request to ``/api/events`` at all; a
sampled blog gets only the sessions the server keeps, which are found by asking the server
itself: the same events, posted past the client's sampling, and read back from its store.

Every server runs with ``--secret`` (the capture API is admin-only, and refused on an open
server); pages carry room tokens. Absence is proven by the tracker's own state (the event was
seen and decided, nothing waits) before the network log is read. Every wait is bounded.
"""

from __future__ import annotations

import json
import random
import re
import time
import uuid
from pathlib import Path

import pytest
from playwright.async_api import BrowserContext, Page, Request, WebSocketRoute

from rtc.auth import Scope, issue, issue_scoped
from tests.demo.harness import TIMEOUT_MS, ServerFactory, stop
from tests.rtc.processes import ServerProcess
from tracks.sampling import props_in_sample

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

SECRET = "capture-" * 4
USER = 7
POST = 2
NAME = "jetpack_rtc_connection_error"
EVENTS_PATH = re.compile(r"/api/events(\?|$)")
# Spread over the hash: consecutive ids fall close together under FNV-1a, seeded ids do not.
SESSIONS = random.Random(17).sample(range(2**32), 40)


def room_token(blog_id: int) -> str:
    return issue(SECRET, blog_id=blog_id, post_id=None, user_id=USER, ttl_seconds=600)


def watch_events_requests(context: BrowserContext) -> list[dict[str, object]]:
    """The bodies of every request any page of ``context`` makes to /api/events, from now on."""
    bodies: list[dict[str, object]] = []

    def seen(request: Request) -> None:
        if EVENTS_PATH.search(request.url):
            bodies.append(json.loads(request.post_data or "{}"))

    context.on("request", seen)
    return bodies


async def set_capture(
    context: BrowserContext, server: ServerProcess, blog_id: int, **settings: object
) -> None:
    admin = issue_scoped(SECRET, scope=Scope.ADMIN, ttl_seconds=600)
    response = await context.request.put(
        f"{server.http_url}/api/capture/{blog_id}",
        data=json.dumps(settings),
        headers={"Authorization": f"Bearer {admin}", "Content-Type": "application/json"},
        timeout=TIMEOUT_MS,
    )
    assert response.status == 200, await response.text()
    expected = {"blog_id": blog_id, "enabled": True, "sample_rate": 1.0, **settings}
    assert await response.json() == expected


async def refuse_room_sockets(page: Page) -> None:
    """The page's room socket dies before it opens: the demo reports that from the browser."""

    async def refuse(socket: WebSocketRoute) -> None:
        await socket.close(code=1006)

    await page.route_web_socket(re.compile(r"/rooms/"), refuse)


async def demo_page(context: BrowserContext, server: ServerProcess, blog_id: int) -> Page:
    page = await context.new_page()
    await refuse_room_sockets(page)
    query = f"blog={blog_id}&post={POST}&user={USER}&name=Ada&flush_ms=50"
    query += f"&token={room_token(blog_id)}"
    await page.goto(f"{server.http_url}/?{query}")
    return page


async def test_a_blog_switched_off_sends_nothing(
    start_server: ServerFactory, context: BrowserContext
) -> None:
    off, on = 1, 2
    async with start_server("--secret", SECRET) as server:
        await set_capture(context, server, off, enabled=False)
        bodies = watch_events_requests(context)
        off_page = await demo_page(context, server, off)
        # The demo page's tracker saw its connection error, read the blog's switch and dropped
        # it: nothing waits, so neither a later flush nor a beacon on page hide can send it.
        await off_page.wait_for_function(
            """() => {
                const stats = window.rtcDemo.tracker.stats()
                return stats.submitted === 1 && stats.captureOff === 1 && stats.queued === 0
            }""",
            timeout=TIMEOUT_MS,
        )
        assert bodies == []
        stats = await off_page.evaluate("() => window.rtcDemo.tracker.stats()")
        assert (stats["sent"], stats["beacons"], stats["sampledOut"]) == (0, 0, 0)

        # The same page of a blog whose capture is on does send: the watch above would have
        # seen the switched-off page's request.
        on_page = await demo_page(context, server, on)
        await on_page.wait_for_function(
            "() => window.rtcDemo.tracker.stats().accepted === 1", timeout=TIMEOUT_MS
        )
        session_id = await on_page.evaluate("() => window.rtcDemo.doc.clientID")
        [body] = bodies
        [event] = body["events"]  # type: ignore[index]
        assert event["props"]["blog_id"] == on
        assert event["props"]["session_id"] == session_id
        stored = [e for e in await stop(server) if e.name == NAME]
        assert [e.props["blog_id"] for e in stored] == [on]


STREAMS_TOML = """
[streams.presence]
events = ["jetpack_rtc_join", "jetpack_rtc_leave", "jetpack_rtc_blocked", "{name}"]
[streams.client_errors]
events = ["{name}"]
origins = ["client"]
sample_rate = {rate}
"""


def event_of(session_id: int, blog_id: int) -> dict[str, object]:
    return {
        "event_id": str(uuid.uuid4()),
        "name": NAME,
        "ts": int(time.time() * 1000),
        "props": {
            "blog_id": blog_id, "post_id": POST, "session_id": session_id, "wp_user_id": USER,
            "error_code": "connect-failed", "close_code": 1006,
        },
    }


@pytest.mark.parametrize(
    ("stream_rate", "capture_rate"),
    [(None, 0.25), (0.5, 0.25), (0.25, 0.5)],
    ids=["default-streams", "stream-half", "stream-quarter"],
)
async def test_a_sampled_blog_sends_only_the_sessions_the_server_keeps(
    start_server: ServerFactory,
    context: BrowserContext,
    tmp_path: Path,
    stream_rate: float | None,
    capture_rate: float,
) -> None:
    blog = 3
    args = ["--secret", SECRET]
    if stream_rate is not None:
        streams = tmp_path / "streams.toml"
        streams.write_text(STREAMS_TOML.format(name=NAME, rate=stream_rate))
        args += ["--streams", str(streams)]
    async with start_server(*args) as server:
        await set_capture(context, server, blog, sample_rate=capture_rate)
        page = await context.new_page()
        await page.goto(f"{server.http_url}/healthz")
        bodies = watch_events_requests(context)
        endpoint = f"/api/events?token={room_token(blog)}"
        sent_ids: list[str] = await page.evaluate(
            """async ([endpoint, blog, post, user, sessions]) => {
                const { createTracker } = await import('/demo/src/rtc-tracks.js')
                const tracker = createTracker({ endpoint, flushIntervalMs: 0 })
                window.tracker = tracker
                await tracker.ready
                const ids = sessions.map((session_id) => tracker.connectionError({
                    blog_id: blog, post_id: post, session_id, wp_user_id: user,
                    error_code: 'connect-failed', close_code: 1006
                }))
                await tracker.flush()
                return ids
            }""",
            [endpoint, blog, POST, USER, SESSIONS],
        )
        stats = await page.evaluate("() => window.tracker.stats()")
        posted = [event for body in bodies for event in body["events"]]  # type: ignore[attr-defined]
        by_page = {event["props"]["session_id"] for event in posted}

        # The server's own verdict: the same sessions, posted past the client's sampling.
        direct = [event_of(session_id, blog) for session_id in SESSIONS]
        response = await page.request.post(
            f"{server.http_url}{endpoint}",
            data=json.dumps({"events": direct}),
            headers={"Content-Type": "application/json"},
            timeout=TIMEOUT_MS,
        )
        assert response.status == 202
        answer = await response.json()
        stored = [event for event in await stop(server) if event.name == NAME]

    kept_by_server = {
        event.props["session_id"]
        for event in stored
        if event.event_id in {str(item["event_id"]) for item in direct}
    }
    assert (answer["accepted"], answer["dropped"], answer["rejected"]) == (
        len(kept_by_server), len(SESSIONS) - len(kept_by_server), [],
    )
    assert 0 < len(kept_by_server) < len(SESSIONS)  # both kinds, or the test proves little
    assert by_page == kept_by_server
    # ... and the rule they share, as tracks.sampling writes it: both samples, by session.
    rate = min(stream_rate or 1.0, capture_rate)
    assert kept_by_server == {
        session_id
        for session_id in SESSIONS
        if props_in_sample({"blog_id": blog, "post_id": POST, "session_id": session_id}, rate)
    }
    # Everything the page sent was stored; nothing else of the page's was.
    assert {event.event_id for event in stored} - {str(item["event_id"]) for item in direct} == {
        event["event_id"] for event in posted
    }
    assert len(sent_ids) == len(SESSIONS)
    assert (stats["sampledOut"], stats["captureOff"], stats["queued"]) == (
        len(SESSIONS) - len(by_page), 0, 0,
    )


async def test_a_blog_switched_on_again_is_read_again(
    start_server: ServerFactory, context: BrowserContext
) -> None:
    """The switch is re-read once `captureTtlMs` old: a page open across a change follows it."""
    blog = 4
    async with start_server("--secret", SECRET) as server:
        page = await context.new_page()
        await page.goto(f"{server.http_url}/healthz")
        await set_capture(context, server, blog, enabled=False)
        bodies = watch_events_requests(context)
        await page.evaluate(
            """async (endpoint) => {
                const { createTracker } = await import('/demo/src/rtc-tracks.js')
                window.tracker = createTracker({ endpoint, flushIntervalMs: 0, captureTtlMs: 0 })
                await window.tracker.ready
            }""",
            f"/api/events?token={room_token(blog)}",
        )
        submit = f"""(session_id) => {{
            window.tracker.connectionError({{
                blog_id: {blog}, post_id: {POST}, session_id, error_code: 'connect-failed'
            }})
            return window.tracker.flush()
        }}"""
        await page.evaluate(submit, SESSIONS[0])
        assert bodies == []
        await set_capture(context, server, blog, enabled=True)
        await page.evaluate(submit, SESSIONS[1])
        assert [[e["props"]["session_id"] for e in body["events"]] for body in bodies] == [  # type: ignore[attr-defined]
            [SESSIONS[1]]
        ]
        stats = await page.evaluate("() => window.tracker.stats()")
        assert (stats["captureOff"], stats["sent"], stats["accepted"]) == (1, 1, 1)
        await stop(server)
