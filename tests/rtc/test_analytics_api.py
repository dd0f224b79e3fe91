"""Client ingest, capture control and session timelines, against a real server."""

from __future__ import annotations

import json
import logging
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from rtc.analytics.ingest import bucket_event_id
from rtc.auth import issue, issue_scoped
from tracks import read_events

from .clients import TIMEOUT, RawClient, serve_rtc

pytestmark = pytest.mark.slow

SECRET = "correct horse battery staple, 32+ bytes long"
ADMIN = {"Authorization": f"Bearer {issue_scoped(SECRET, scope='admin', ttl_seconds=3600)}"}


def client_error(session_id: int = 111, event_id: str | None = None, **props: Any) -> dict:
    event: dict[str, Any] = {
        "name": "jetpack_rtc_connection_error",
        "ts": int(time.time() * 1000),
        "props": {"blog_id": 7, "post_id": 42, "session_id": session_id,
                  "error_code": "dns-failure", **props},
    }
    if event_id is not None:
        event["event_id"] = event_id
    return event


async def test_ingest_records_valid_events_once_and_reports_the_rest(tmp_path: Path) -> None:
    async with serve_rtc(tmp_path) as rtc, httpx.AsyncClient(timeout=TIMEOUT) as http:
        url = f"{rtc.server.http_url}/api/events"
        stable = str(uuid.uuid4())
        batch = {"events": [
            client_error(event_id=stable),
            {"name": "Not A Name", "props": {}},
            client_error(event_id=stable),
            client_error(event_id="not-a-uuid"),
            "nonsense",
        ]}
        answer = await http.post(url, json=batch)
        assert answer.status_code == 202
        body = answer.json()
        assert (body["accepted"], body["duplicates"]) == (1, 1)
        assert [r["index"] for r in body["rejected"]] == [1, 3, 4]
        assert "name" in body["rejected"][0]["reason"]
        # the client retries the whole batch: nothing is counted twice
        again = (await http.post(url, json=batch)).json()
        assert (again["accepted"], again["duplicates"]) == (0, 2)
        recorded = rtc.events("connection_error")
        assert len(recorded) == 1
        assert recorded[0].event_id == stable
        assert recorded[0].props["origin"] == "client"


async def test_events_without_ids_are_deduplicated_by_time_bucket(tmp_path: Path) -> None:
    async with serve_rtc(tmp_path, sqlite=True) as rtc, httpx.AsyncClient(timeout=TIMEOUT) as http:
        url = f"{rtc.server.http_url}/api/events"
        first = client_error()
        retry = {**first, "ts": first["ts"] + 1}  # a rapid retry: same bucket
        for event in (first, retry):
            assert (await http.post(url, json={"events": [event]})).status_code == 202
        await rtc.server.flush()
    stored = [e for e in read_events(tmp_path / "events.sqlite")
              if e.name == "jetpack_rtc_connection_error"]
    assert len(stored) == 1
    window = 3_600_000
    props = {**first["props"], "origin": "client"}
    assert stored[0].event_id == bucket_event_id(first["name"], props, first["ts"], window)


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"{", 400),
        (b'{"events": 3}', 400),
        (json.dumps({"events": [client_error()] * 501}).encode(), 400),
        (b"x" * (1024 * 1024 + 10), 413),
    ],
)
async def test_bad_batches_get_a_clear_answer(tmp_path: Path, body: bytes, status: int) -> None:
    async with serve_rtc(tmp_path) as rtc, httpx.AsyncClient(timeout=TIMEOUT) as http:
        answer = await http.post(f"{rtc.server.http_url}/api/events", content=body)
        assert answer.status_code == status
        assert "error" in answer.json()
        assert rtc.events("connection_error") == []
        assert (await http.get(f"{rtc.server.http_url}/healthz")).status_code == 200


async def test_a_flood_is_refused_with_429(tmp_path: Path) -> None:
    async with serve_rtc(tmp_path, ingest_rate=1, ingest_burst=3) as rtc, httpx.AsyncClient(
        timeout=TIMEOUT
    ) as http:
        statuses = [
            (await http.post(f"{rtc.server.http_url}/api/events",
                             json={"events": [client_error(session_id=n)]})).status_code
            for n in range(6)
        ]
        assert statuses[:3] == [202, 202, 202]
        assert 429 in statuses[3:]


async def test_cors_follows_the_allowed_origins(tmp_path: Path) -> None:
    async with serve_rtc(tmp_path, allowed_origins=("https://wp.example",)) as rtc, \
            httpx.AsyncClient(timeout=TIMEOUT) as http:
        url = f"{rtc.server.http_url}/api/events"
        preflight = await http.options(url, headers={"Origin": "https://wp.example"})
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == "https://wp.example"
        # Tokens travel in the request, never in cookies: no credentials, ever.
        assert "access-control-allow-credentials" not in preflight.headers
        foreign = await http.post(url, json={"events": [client_error()]},
                                  headers={"Origin": "https://evil.example"})
        assert foreign.status_code == 403
        assert rtc.events("connection_error") == []


@pytest.mark.parametrize("secret", [None, SECRET])
async def test_cors_reflects_no_origin_by_default(tmp_path: Path, secret: str | None) -> None:
    """Item 12: any Origin was reflected, with `Allow-Credentials: true`, even with --secret."""
    async with serve_rtc(tmp_path, secret=secret) as rtc, \
            httpx.AsyncClient(timeout=TIMEOUT) as http:
        url = f"{rtc.server.http_url}/api/events"
        evil = {"Origin": "https://evil.example"}
        preflight = await http.options(url, headers=evil)
        sent = await http.post(url, json={"events": [client_error()]}, headers=evil)
        for answer in (preflight, sent):
            assert "access-control-allow-origin" not in answer.headers
            assert "access-control-allow-credentials" not in answer.headers


async def test_tokens_are_honoured_for_client_events(tmp_path: Path) -> None:
    async with serve_rtc(tmp_path, secret=SECRET) as rtc, httpx.AsyncClient(
        timeout=TIMEOUT
    ) as http:
        token = issue(SECRET, blog_id=7, post_id=42, user_id=1, ttl_seconds=60)
        url = f"{rtc.server.http_url}/api/events?token={token}"
        other_post = client_error(session_id=2)
        other_post["props"]["post_id"] = 43
        body = (await http.post(url, json={"events": [client_error(), other_post]})).json()
        assert body["accepted"] == 1
        assert body["rejected"] == [{"index": 1, "reason": "forbidden"}]
        anonymous = await http.post(f"{rtc.server.http_url}/api/events",
                                    json={"events": [client_error(session_id=3)]})
        assert anonymous.json()["rejected"][0]["reason"] == "authentication-failed"
        header = await http.post(f"{rtc.server.http_url}/api/events",
                                 json={"events": [client_error(session_id=4)]},
                                 headers={"Authorization": f"Bearer {token}"})
        assert header.json()["accepted"] == 1


async def test_with_tokens_a_browser_speaks_only_for_its_token(tmp_path: Path) -> None:
    """Item 10: a token for user 666 posted a connection_error naming user 101, which then
    appeared in user 101's session timeline."""
    async with serve_rtc(tmp_path, secret=SECRET) as rtc, httpx.AsyncClient(
        timeout=TIMEOUT
    ) as http:
        token = issue(SECRET, blog_id=7, post_id=None, user_id=666, ttl_seconds=60)
        url = f"{rtc.server.http_url}/api/events?token={token}"
        forged = client_error(session_id=5, wp_user_id=101)
        other_blog = client_error(session_id=6)
        other_blog["props"]["blog_id"] = 8
        body = (await http.post(url, json={"events": [forged, other_blog]})).json()
        assert body["accepted"] == 1
        assert body["rejected"] == [{"index": 1, "reason": "forbidden"}]
        recorded = await rtc.wait_event("connection_error", session_id=5)
        assert recorded.props["wp_user_id"] == 666
        assert [e.props["wp_user_id"] for e in rtc.events("connection_error")] == [666]


@pytest.mark.parametrize(
    ("props", "reason"),
    [
        ({"error_code": "x" * 100_000}, "error_code must be 1-64 characters"),
        ({"error_code": "DNS Failure"}, "error_code must be 1-64 characters"),
        ({"close_code": 99999}, "close_code must be an integer from 1000 to 4999"),
        ({"detail": "y" * 257}, "longer than 256"),
        ({"detail": "bidi \u202e override"}, "control or format characters"),
        ({"detail": "lone \ud800 surrogate"}, "control or format characters"),
        ({"detail": {"a": {"b": {"c": {"d": 1}}}}}, "nested deeper than 3"),
        ({"detail": list(range(65))}, "more than 64 items"),
        ({"detail": 2**64}, "fit in 64 bits"),
        ({"p" * 65: 1}, "prop names are at most 64"),
        # Item 1(a): ids must fit the store's 64-bit columns, or every batch after fails.
        ({"session_id": 9223372036854775808}, "session_id must be an integer from 0 to 2**32"),
        ({"session_id": 2**32}, "session_id must be an integer from 0 to 2**32"),
        ({"session_id": "111"}, "session_id must be an integer"),
        ({"wp_user_id": 2**70}, "wp_user_id must be a positive integer below 2**63"),
        ({"blog_id": 2**63}, "blog_id must be a positive integer below 2**63"),
        ({"post_id": "42"}, "post_id must be a positive integer below 2**63"),
        ({"request_id": -1}, "request_id must be a positive integer below 2**63"),
    ],
)
async def test_what_a_browser_may_say_is_bounded(
    tmp_path: Path, props: dict[str, Any], reason: str
) -> None:
    async with serve_rtc(tmp_path, sqlite=True) as rtc, httpx.AsyncClient(
        timeout=TIMEOUT
    ) as http:
        url = f"{rtc.server.http_url}/api/events"
        batch = json.dumps({"events": [client_error(**props)]})  # ASCII: "\\ud800" escaped
        body = (await http.post(url, content=batch.encode())).json()
        assert body["accepted"] == 0
        assert reason in body["rejected"][0]["reason"]
        assert len(body["rejected"][0]["reason"]) < 200
        # Recording goes on: the next batch is stored.
        fine = (await http.post(url, json={"events": [client_error(session_id=2**32 - 1)]}))
        assert fine.json()["accepted"] == 1
        await rtc.server.flush()
    stored = [e for e in read_events(tmp_path / "events.sqlite")
              if e.name == "jetpack_rtc_connection_error"]
    assert [e.props["session_id"] for e in stored] == [2**32 - 1]


async def test_a_deeply_nested_body_is_a_400_and_one_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Item 11: 900 levels (1.9 KB) gave a 500 and 214 KB of traceback per request."""
    deep = b'{"events": [{"name": "jetpack_rtc_connection_error", "props": {"x": '
    deep += b"[" * 900 + b"]" * 900 + b"}}]}"
    async with serve_rtc(tmp_path, secret=SECRET) as rtc, httpx.AsyncClient(
        timeout=TIMEOUT
    ) as http:
        base = rtc.server.http_url
        caplog.set_level(logging.INFO, logger="rtc")
        caplog.clear()
        for path, headers in [("/api/events", {}), ("/api/rooms/7/42/kick", ADMIN),
                              ("/api/capture/7", ADMIN)]:
            for body in (deep, b"[" * 100_000, b'{"user_id": NaN}'):
                answer = await http.post(f"{base}{path}", content=body, headers=headers)
                assert answer.status_code == 400, (path, answer.text)
                assert answer.json()["error"].startswith("body is not JSON")
        lines = [record for record in caplog.records if record.name.startswith("rtc")]
        assert len(lines) == 9
        assert all(record.exc_info is None for record in lines)
        assert sum(len(record.getMessage()) for record in lines) < 9 * 200


async def test_capture_can_be_switched_off_per_blog_and_stays_off(tmp_path: Path) -> None:
    async with serve_rtc(tmp_path, secret=SECRET) as rtc, httpx.AsyncClient(
        timeout=TIMEOUT
    ) as http:
        capture = f"{rtc.server.http_url}/api/capture/7"
        assert (await http.put(capture, json={"enabled": False})).status_code == 401
        off = await http.put(capture, json={"enabled": False}, headers=ADMIN)
        assert off.json() == {"blog_id": 7, "enabled": False, "sample_rate": 1.0}
        token = issue(SECRET, blog_id=7, post_id=42, user_id=1, ttl_seconds=60)
        async with RawClient.connect(f"{rtc.room_url()}?token={token}") as ada:
            await ada.join(111, user=1)
            await ada.barrier()
        listing = await http.get(f"{rtc.server.http_url}/api/capture", headers=ADMIN)
        assert listing.json() == {"blogs": {"7": {"enabled": False, "sample_rate": 1.0}}}
        assert rtc.events("join") == []
    async with serve_rtc(tmp_path, secret=SECRET) as rtc, httpx.AsyncClient(
        timeout=TIMEOUT
    ) as http:
        streams = (await http.get(f"{rtc.server.http_url}/api/streams?blog_id=7")).json()
        assert streams["capture"] == {"blog_id": 7, "enabled": False, "sample_rate": 1.0}
        await http.put(f"{rtc.server.http_url}/api/capture/7", json={"enabled": True},
                       headers=ADMIN)
        token = issue(SECRET, blog_id=7, post_id=42, user_id=1, ttl_seconds=60)
        async with RawClient.connect(f"{rtc.room_url()}?token={token}") as ada:
            await ada.join(222, user=1)
            await rtc.wait_event("join", session_id=222)


async def test_a_session_timeline_tells_its_story(tmp_path: Path) -> None:
    async with serve_rtc(tmp_path, sqlite=True) as rtc, httpx.AsyncClient(
        timeout=TIMEOUT
    ) as http:
        async with RawClient.connect(rtc.room_url()) as bob:
            await bob.join(222, user=2)
            await bob.barrier()
            for _ in range(2):  # joins, drops, reconnects with the same session id
                async with RawClient.connect(rtc.room_url()) as ada:
                    await ada.join(111, user=1)
                    await ada.barrier()
                    ada.ws.transport.abort()
                await rtc.wait_event("connection_error", session_id=111)
            async with RawClient.connect(rtc.room_url()) as ada:
                await ada.join(111, user=1)
                await ada.barrier()
            await rtc.wait_event("leave", session_id=111, clean=True)
        await http.post(f"{rtc.server.http_url}/api/events",
                        json={"events": [client_error(session_id=111)]})
        await rtc.server.flush()
        answer = await http.get(f"{rtc.server.http_url}/api/sessions/7/42/111")
        assert answer.status_code == 200
        story = answer.json()
        assert story["wp_user_id"] == 1
        assert [c["reconnect"] for c in story["connections"]] == [False, True, True]
        assert [c["clean"] for c in story["connections"]] == [False, False, True]
        assert story["reconnects"] == 2
        assert [(e["origin"], e["error_code"]) for e in story["errors"]] == [
            ("server", "abnormal-closure"), ("server", "abnormal-closure"),
            ("client", "dns-failure")]
        assert story["company"][0]["contributors"] == [1, 2]
        missing = await http.get(f"{rtc.server.http_url}/api/sessions/7/42/999")
        assert missing.status_code == 404
        page = await http.get(f"{rtc.server.http_url}/sessions/7/42/111")
        assert page.status_code == 200
        assert "/api/sessions/" in page.text


async def test_streams_decide_what_is_recorded_from_server_and_clients(tmp_path: Path) -> None:
    streams = tmp_path / "streams.toml"
    streams.write_text(
        """
[streams.presence]
events = ["jetpack_rtc_leave"]
[streams.client_errors]
events = ["jetpack_rtc_connection_error"]
origins = ["client"]
sample_rate = 1.0
[streams.client_errors.props]
session_id = "int"
error_code = "str"
"""
    )
    async with serve_rtc(tmp_path, streams=streams) as rtc, httpx.AsyncClient(
        timeout=TIMEOUT
    ) as http:
        async with RawClient.connect(rtc.room_url()) as ada:
            await ada.join(111, user=1)
            await ada.barrier()
        await rtc.wait_event("leave", session_id=111)
        assert rtc.events("join") == []  # no stream takes joins
        missing = client_error()
        del missing["props"]["error_code"]
        body = (await http.post(f"{rtc.server.http_url}/api/events",
                                json={"events": [client_error(), missing]})).json()
        assert body["accepted"] == 1
        assert body["rejected"] == [{"index": 1, "reason": "missing prop error_code"}]
        view = (await http.get(f"{rtc.server.http_url}/api/streams")).json()
        assert view["streams"]["client_errors"]["events"] == ["jetpack_rtc_connection_error"]
        assert "recorders" not in json.dumps(view)


def test_a_bad_streams_file_stops_startup_with_its_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    streams = tmp_path / "streams.toml"
    streams.write_text('[streams.presence]\nevents = ["jetpack_rtc_join"]\nsample_rate = 7\n')
    result = subprocess.run(
        [sys.executable, "-m", "rtc", "serve", "--port", "0", "--data-dir", str(tmp_path),
         "--streams", str(streams)],
        capture_output=True, text=True, timeout=TIMEOUT,
    )
    assert result.returncode == 2
    assert f"{streams}:3:" in result.stderr


async def test_a_session_archived_away_is_read_from_the_archive(tmp_path: Path) -> None:
    """With --archive-dir, a timeline whose days `tracks archive` moved still tells it all."""
    from rtc import RtcServer, ServerConfig
    from tracks import Event
    from tracks.cli import main as tracks_main
    from tracks.presence.sqlite_schema import connect, insert_events

    long_ago = int(time.time() * 1000) - 30 * 86_400_000
    props = {"blog_id": 7, "post_id": 42, "session_id": 555, "wp_user_id": 5}
    connection = connect(tmp_path / "events.sqlite")
    try:
        insert_events(connection, [
            Event("jetpack_rtc_join", props, ts=long_ago),
            Event("jetpack_rtc_leave", {**props, "duration_ms": 60_000, "clean": True},
                  ts=long_ago + 60_000),
        ])
    finally:
        connection.close()
    archive = tmp_path / "archive"
    store = str(tmp_path / "events.sqlite")
    assert tracks_main(["archive", store, "--older-than", "7d", "--to", str(archive)]) == 0
    url = "/api/sessions/7/42/555"
    for archive_dir, status in [(None, 404), (archive, 200)]:
        config = ServerConfig(
            data_dir=tmp_path, port=0, rollup_interval=0, archive_dir=archive_dir
        )
        async with RtcServer(config) as server, httpx.AsyncClient(timeout=TIMEOUT) as http:
            answer = await http.get(f"{server.http_url}{url}")
        assert answer.status_code == status, (archive_dir, answer.text)
    assert answer.json()["wp_user_id"] == 5
