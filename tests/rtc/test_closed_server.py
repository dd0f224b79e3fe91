"""A server with `--secret` is closed: every read needs a credential (issue 12, item 2), and
bad requests get our own 4xx (item 11). Against a real server on 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path
from urllib.parse import quote

import anyio
import httpx
import jwt
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from rtc.auth import issue, issue_scoped

from .clients import TIMEOUT, RawClient, Running, serve_rtc

pytestmark = pytest.mark.slow

SECRET = "correct horse battery staple, 32+ bytes long"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def room_token(post_id: int | None = 42, user_id: int = 101) -> str:
    return issue(SECRET, blog_id=7, post_id=post_id, user_id=user_id, ttl_seconds=600,
                 name="Ada")


READ = bearer(issue_scoped(SECRET, scope="read", ttl_seconds=600))
ADMIN = bearer(issue_scoped(SECRET, scope="admin", ttl_seconds=600))
ROOM = bearer(room_token())
OTHER_ROOM = bearer(room_token(post_id=43))
OLD_ADMIN = bearer(SECRET)  # before: the signing secret itself was the admin credential

# What a read returns: the room's own (roster, timeline), or everyone's (lists, stats).
ROOM_READS = ["/api/rooms/7/42", "/api/sessions/7/42/111"]
SCOPED_READS = ["/api/rooms", "/api/stats", "/api/stats/live", "/metrics"]


def forged(**claims: object) -> str:
    """A token signed with the secret whose claims are a room token's, then these."""
    issued = int(time.time())
    base = {"blog_id": 7, "post_id": 42, "user_id": 101, "iat": issued, "exp": issued + 60}
    return jwt.encode({**base, **claims}, SECRET, algorithm="HS256")


def feed_url(rtc: Running, query: str = "") -> str:
    return rtc.server.ws_url.replace("/rooms", f"/events?blog_id=7&post_id=42{query}")


@contextlib.asynccontextmanager
async def closed_server_with_ada(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A closed server where user 101 (Ada) edits post 7/42 as session 111."""
    async with (
        serve_rtc(tmp_path, sqlite=True, secret=SECRET) as rtc,
        RawClient.connect(f"{rtc.room_url()}?token={room_token()}") as ada,
        httpx.AsyncClient(base_url=rtc.server.http_url, timeout=TIMEOUT) as http,
    ):
        await ada.join(111, user=101)
        await rtc.wait_event("join", session_id=111)
        await rtc.server.flush()
        yield rtc, http


async def test_with_a_secret_every_read_needs_a_credential(tmp_path: Path) -> None:
    async with closed_server_with_ada(tmp_path) as (_rtc, http):
        for path in ROOM_READS + SCOPED_READS:
            for headers in ({}, OLD_ADMIN, bearer("garbage")):
                answer = await http.get(path, headers=headers)
                assert answer.status_code == 401, (path, headers, answer.text)
                assert answer.headers["www-authenticate"].startswith("Bearer")
                assert "101" not in answer.text
                assert "Ada" not in answer.text
        # A room token opens its own room's roster and timelines, and nothing else.
        for path in ROOM_READS:
            assert (await http.get(path, headers=ROOM)).status_code == 200
            assert (await http.get(f"{path}?token={room_token()}")).status_code == 200
            assert (await http.get(path, headers=OTHER_ROOM)).status_code == 403
        for path in SCOPED_READS:
            assert (await http.get(path, headers=ROOM)).status_code == 401
        # A read (or admin) token opens every read.
        for path in ROOM_READS + SCOPED_READS:
            for headers in (READ, ADMIN):
                assert (await http.get(path, headers=headers)).status_code == 200, path
        roster = (await http.get("/api/rooms/7/42", headers=READ)).json()
        assert [user["id"] for user in roster["contributors"]] == [101]
        # Admin scope alone opens kick and capture control.
        for method, path, body in [("POST", "/api/rooms/7/42/kick", {"user_id": 9}),
                                   ("PUT", "/api/capture/7", {"enabled": True}),
                                   ("GET", "/api/capture", None)]:
            for headers, status in [({}, 401), (OLD_ADMIN, 401), (ROOM, 401), (READ, 403),
                                    (ADMIN, 200)]:
                answer = await http.request(method, path, json=body, headers=headers)
                assert answer.status_code == status, (method, path, headers, answer.text)


async def test_the_live_feed_needs_a_token_for_its_room(tmp_path: Path) -> None:
    async with closed_server_with_ada(tmp_path) as (rtc, _http):
        for query, status in [("", 401), (f"&token={quote(SECRET)}", 401),
                              (f"&token={room_token(post_id=43)}", 403)]:
            with pytest.raises(InvalidStatus) as refused:
                await connect(feed_url(rtc, query))
            assert refused.value.response.status_code == status
            assert b"101" not in refused.value.response.body
        read_token = issue_scoped(SECRET, scope="read", ttl_seconds=60)
        for query, headers in [(f"&token={room_token(post_id=None)}", {}),
                               (f"&token={read_token}", {}), ("", ROOM)]:
            with anyio.fail_after(TIMEOUT):
                async with connect(feed_url(rtc, query), additional_headers=headers) as feed:
                    seen = json.loads(await feed.recv())  # recent events first
            assert seen["props"]["blog_id"] == 7


async def test_a_feed_viewer_is_closed_when_its_token_expires(tmp_path: Path) -> None:
    async with closed_server_with_ada(tmp_path) as (rtc, _http):
        short = issue(SECRET, blog_id=7, post_id=42, user_id=102, ttl_seconds=2)
        with anyio.fail_after(TIMEOUT):
            # Two seconds: `exp` counts whole seconds, so one could be spent by the handshake.
            async with connect(feed_url(rtc, f"&token={short}")) as feed:
                await feed.wait_closed()
    assert (feed.close_code, feed.close_reason) == (4401, "token-expired")


async def test_a_kick_closes_the_users_feed_too(tmp_path: Path) -> None:
    async with closed_server_with_ada(tmp_path) as (rtc, http):
        with anyio.fail_after(TIMEOUT):
            async with connect(feed_url(rtc, f"&token={room_token()}")) as feed:
                await feed.recv()  # admitted: recent events first
                kicked = await http.post(
                    "/api/rooms/7/42/kick", json={"user_id": 101}, headers=ADMIN
                )
                assert kicked.json()["closed"] == 2  # Ada's session and her feed
                await feed.wait_closed()
    assert (feed.close_code, feed.close_reason) == (4403, "revoked")


async def test_health_and_pages_stay_open_and_say_nothing_about_users(tmp_path: Path) -> None:
    async with closed_server_with_ada(tmp_path) as (_rtc, http):
        health = await http.get("/healthz")
        assert health.status_code == 200
        assert set(health.json()) == {"status", "uptime_s", "rooms", "connections", "sessions"}
        for page in ("/sessions/7/42/111", "/stats", "/"):
            answer = await http.get(page)
            assert answer.status_code == 200
            assert "text/html" in answer.headers["content-type"]
            assert "Ada" not in answer.text


async def test_without_a_secret_reads_stay_open_and_admin_is_refused(tmp_path: Path) -> None:
    async with (
        serve_rtc(tmp_path, sqlite=True) as rtc,
        RawClient.connect(rtc.room_url()) as ada,
        httpx.AsyncClient(base_url=rtc.server.http_url, timeout=TIMEOUT) as http,
    ):
        await ada.join(111, user=101)
        await rtc.wait_event("join", session_id=111)
        await rtc.server.flush()
        for path in ["/api/rooms/7/42", *SCOPED_READS]:
            assert (await http.get(path)).status_code == 200, path
        with anyio.fail_after(TIMEOUT):
            async with connect(feed_url(rtc)) as feed:
                assert json.loads(await feed.recv())["props"]["session_id"] == 111
        kick = await http.post("/api/rooms/7/42/kick", json={"user_id": 101}, headers=ADMIN)
        assert kick.status_code == 403
        assert "--secret" in kick.json()["error"]


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        ("/demo/%00", 404, "no such path"),
        ("/demo/%01x.js", 404, "no such path"),
        ("/demo/" + "a" * 300 + ".js", 404, "no such path"),
        ("/demo/" + "%C3%A9" * 200, 404, "no such path"),
        ("/api/sessions/1/1/%C2%B9", 400, "session_id must be an integer"),
        ("/api/streams?blog_id=%C2%B2", 400, "ids must be positive integers"),
        ("/api/rooms/%C2%B2/1", 400, "must be positive integers"),
        ("/events?blog_id=%C2%B2&post_id=1", 400, "must be positive integers"),
        ("/api/stats?blog_id=%C2%B2", 400, "blog_id must be a positive integer"),
    ],
)
async def test_bad_requests_get_our_own_4xx_and_one_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, path: str, status: int, message: str
) -> None:
    caplog.set_level(logging.INFO, logger="rtc")
    async with serve_rtc(tmp_path) as rtc, httpx.AsyncClient(timeout=TIMEOUT) as http:
        caplog.clear()
        answer = await http.get(f"{rtc.server.http_url}{path}")
        assert answer.status_code == status
        assert answer.json()["status"] == status
        assert message in answer.json()["error"]
        assert "invalid literal" not in answer.text
        lines = [record for record in caplog.records if record.name.startswith("rtc")]
        assert len(lines) == 1
        assert lines[0].exc_info is None


async def test_a_token_naming_a_non_ascii_post_is_refused(tmp_path: Path) -> None:
    strange = forged(post_id="²")
    async with closed_server_with_ada(tmp_path) as (rtc, http):
        roster = await http.get(f"/api/rooms/7/42?token={strange}")
        assert roster.status_code == 401
        assert "'post_id' must be a positive integer" in roster.json()["error"]
        async with RawClient.connect(f"{rtc.room_url()}?token={strange}") as intruder:
            with contextlib.suppress(ConnectionClosed):
                await intruder.join(666, user=101)
            assert await intruder.closed() == (4401, "authentication-failed")
