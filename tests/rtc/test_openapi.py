"""The OpenAPI document: it describes exactly the routes the server has, and schemathesis,
fuzzing a live server with it, finds no 5xx and no answer the document does not describe."""

from __future__ import annotations

import time
import typing
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.strategies import SearchStrategy
from schemathesis import GenerationMode
from schemathesis.checks import CheckFunction

from rtc import RtcServer, ServerConfig
from rtc.auth import issue_scoped
from rtc.http.connection import has_body
from rtc.http.openapi import ENDPOINTS, document
from rtc.http.routes import FeedRoute, RoomRoute, Route, route
from tests.rtc.clients import TIMEOUT
from tracks import Event
from tracks.presence.sqlite_schema import connect as connect_store
from tracks.presence.sqlite_schema import insert_events

SECRET = "openapi-test-secret-" + "x" * 32
EXAMPLES = 25
"""Generated examples per operation and mode (valid, invalid): about 1,500 requests a run."""
WEBSOCKETS = {RoomRoute, FeedRoute}


# --- the document against the routes ------------------------------------------------------


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda endpoint: endpoint.path)
def test_each_documented_path_routes_to_its_route_with_its_methods(endpoint: Any) -> None:
    target = route(endpoint.example())
    assert type(target) is endpoint.route
    documented = {operation.method for operation in endpoint.operations}
    assert documented == set(target.methods)
    described = document()["paths"][endpoint.path]  # type: ignore[index]
    assert {method.upper() for method in described if method != "parameters"} == documented


def test_every_http_route_is_documented_and_nothing_else() -> None:
    routes = set(typing.get_args(Route)) - WEBSOCKETS
    assert {endpoint.route for endpoint in ENDPOINTS} == routes
    paths = [endpoint.path for endpoint in ENDPOINTS]
    assert len(set(paths)) == len(paths)
    assert set(document()["paths"]) == set(paths)  # type: ignore[arg-type]


def test_path_parameters_are_the_templates_own() -> None:
    for endpoint in ENDPOINTS:
        names = {parameter.name for parameter in endpoint.parameters}
        assert {f"{{{name}}}" for name in names} == {
            segment for segment in endpoint.path.split("/") if segment.startswith("{")
        }, endpoint.path


def test_the_document_is_valid_openapi_3_1() -> None:
    schema = schemathesis.openapi.from_dict(document())
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == sum(len(endpoint.operations) for endpoint in ENDPOINTS)


# --- what schemathesis found ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("head", "body"),
    [(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", False),
     (b"GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n", False),
     (b"GET / HTTP/1.1\r\ncontent-length:  7\r\n\r\n{\"a\":1}", True),
     (b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", True),
     (b"GET / HTTP/1.1\r\nX-Note: Content-Length: 7\r\n\r\n", False)],
)
def test_a_get_with_a_body_is_told_apart(head: bytes, body: bool) -> None:
    assert has_body(head) is body


async def test_a_get_with_a_body_is_answered_not_dropped(tmp_path: Path) -> None:
    """websockets' parser takes no GET body and closed such a connection without a word
    (schemathesis's unsupported-method probe: GET with the POST's body)."""
    async with RtcServer(ServerConfig(data_dir=tmp_path, port=0, rollup_interval=0)) as server:
        async with httpx.AsyncClient(base_url=server.http_url) as client:
            with anyio.fail_after(TIMEOUT):
                wrong = await client.request("GET", "/api/events", json={"events": []})
                read = await client.request("GET", "/api/rooms", content=b"{}")
                upgrade = await client.request("GET", "/rooms/1/2", content=b"x")
    assert wrong.status_code == 405
    assert wrong.headers["allow"] == "POST, OPTIONS"
    assert wrong.json() == {"error": "GET is not allowed here; use POST, OPTIONS", "status": 405}
    assert read.status_code == 200
    assert read.json() == {"rooms": []}
    assert upgrade.status_code == 400
    assert upgrade.json()["status"] == 400


# --- schemathesis against a live server -----------------------------------------------------


def checks() -> list[CheckFunction]:
    names = ("not_a_server_error", "status_code_conformance", "content_type_conformance",
             "response_headers_conformance", "response_schema_conformance")
    return [getattr(schemathesis.checks, name) for name in names]


def seed_events(data_dir: Path) -> None:
    """A session in the event store, so that stats and timelines answer 200 too."""
    now = time.time_ns() // 1_000_000
    props = {"blog_id": 7, "post_id": 42, "session_id": 0, "wp_user_id": 3}
    store = connect_store(data_dir / "events.sqlite")
    try:
        insert_events(store, [
            Event("jetpack_rtc_join", {**props, "contributors": [3], "session_count": 1},
                  ts=now - 3000),
            Event("jetpack_rtc_connection_error",
                  {**props, "error_code": "ping-timeout", "close_code": 1011}, ts=now - 2000),
            Event("jetpack_rtc_leave", {**props, "duration_ms": 1000, "clean": False,
                                        "updates": 1}, ts=now - 1000),
        ])
    finally:
        store.close()


def pages(folder: Path) -> Path:
    """A built pages folder: an unbuilt one answers `/` with a (documented) 503, which
    `not_a_server_error` would flag; tests/rtc/test_demo_not_built.py covers that one."""
    (folder / "dist").mkdir(parents=True)
    (folder / "dist" / "app.js").write_text("export {};")
    for name in ("index.html", "stats.html", "session.html"):
        (folder / name).write_text("<!doctype html><title>page</title>")
    return folder


def fuzz(base_url: str, headers: dict[str, str]) -> Counter[tuple[str, int]]:
    """Every operation of the served document: its examples (the seeded room and session),
    then generated data, valid and invalid. Returns the statuses seen per operation."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json", timeout=TIMEOUT)
    seen: Counter[tuple[str, int]] = Counter()
    with requests.Session() as session:

        def run(strategy: SearchStrategy[schemathesis.Case], examples: int) -> None:
            @settings(max_examples=examples, derandomize=True, database=None, deadline=None,
                      suppress_health_check=list(HealthCheck))
            @given(case=strategy)
            def call(case: schemathesis.Case) -> None:
                response = case.call_and_validate(base_url=base_url, session=session,
                                                  headers=headers, checks=checks(),
                                                  timeout=TIMEOUT)
                seen[case.operation.label, response.status_code] += 1

            call()

        for result in schema.get_all_operations():
            operation = result.ok()
            for strategy in operation.get_strategies_from_examples():
                run(strategy, 1)
            run(operation.as_strategy(generation_mode=GenerationMode.POSITIVE), EXAMPLES)
            if any(operation.iter_parameters()) or operation.body:  # else nothing to break
                run(operation.as_strategy(generation_mode=GenerationMode.NEGATIVE), EXAMPLES)
    return seen


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("secret", [None, SECRET], ids=["open", "secret"])
async def test_schemathesis_finds_nothing(tmp_path: Path, secret: str | None) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    seed_events(data_dir)
    config = ServerConfig(
        data_dir=data_dir, port=0, rollup_interval=0, secret=secret,
        demo_dir=pages(tmp_path / "pages"),
        # Fuzzing posts many batches from one address; the limit itself answers a 429.
        ingest_rate=10_000.0, ingest_burst=10_000,
    )
    headers: dict[str, str] = {}
    if secret is not None:
        admin = issue_scoped(secret, scope="admin", ttl_seconds=600)
        headers["Authorization"] = f"Bearer {admin}"
    async with RtcServer(config) as server:
        async with httpx.AsyncClient(base_url=server.http_url) as client:
            with anyio.fail_after(TIMEOUT):
                served = await client.get("/openapi.json")
        assert served.status_code == 200
        assert served.json() == document()
        seen = await anyio.to_thread.run_sync(fuzz, server.http_url, headers)
    labels = {f"{operation.method} {endpoint.path}"
              for endpoint in ENDPOINTS for operation in endpoint.operations}
    # schemathesis leaves out the operation that serves the document it fuzzes (checked above).
    assert {label for label, _ in seen} == labels - {"GET /openapi.json"}
    # The examples reach past the refusals: the seeded session's timeline, the stats.
    assert seen["GET /api/sessions/{blog_id}/{post_id}/{session_id}", 200]
    assert seen["GET /api/stats", 200]
    assert seen["POST /api/events", 202]
    admin = 200 if secret is not None else 403
    assert seen["POST /api/rooms/{blog_id}/{post_id}/kick", admin]
    assert seen["PUT /api/capture/{blog_id}", admin]
