"""HttpSink and the body encoders, through httpx.MockTransport for exact status sequences."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from pathlib import Path

import anyio
import httpx
import pytest

from tests.tracks.tracks_testing import TIMEOUT, make_events
from tracks import (
    Event,
    GenericEncoder,
    HttpRecorder,
    PostHogEncoder,
    RejectedError,
    RetryPolicy,
    TracksEncoder,
    TransientError,
)
from tracks.deadletter import DeadLetters
from tracks.sinks import UnwritableError
from tracks.sinks.http import HttpSink, redact_url

FAST = RetryPolicy(max_attempts=4, base_delay=0.001, max_delay=0.005, jitter=0)
URL = "https://analytics.example/batch"


def replying(
    *statuses: int, headers: dict[str, str] | None = None
) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    """A transport answering the statuses in turn (then 200), and the requests it saw."""
    seen: list[httpx.Request] = []
    pending = list(statuses)

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        status = pending.pop(0) if pending else 200
        return httpx.Response(status, headers=headers or {})

    return httpx.MockTransport(handle), seen


@pytest.mark.parametrize("status", [200, 201, 202, 204])
async def test_2xx_is_written(status: int) -> None:
    transport, seen = replying(status)
    sink = HttpSink(URL, transport=transport)
    await sink.write(make_events(2))
    await sink.aclose()
    assert len(seen) == 1


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
async def test_retryable_statuses_are_transient(status: int) -> None:
    transport, _ = replying(status, headers={"Retry-After": "7"})
    sink = HttpSink(URL, transport=transport)
    with pytest.raises(TransientError) as info:
        await sink.write(make_events(1))
    assert info.value.retry_after == 7.0
    assert f"HTTP {status}" in str(info.value)


@pytest.mark.parametrize("status", [301, 400, 401, 403, 404, 413, 422])
async def test_other_statuses_are_rejected(status: int) -> None:
    transport, _ = replying(status)
    with pytest.raises(RejectedError, match=f"HTTP {status}"):
        await HttpSink(URL, transport=transport).write(make_events(1))


@pytest.mark.parametrize(("status", "unwritable"), [(400, True), (413, True), (422, True),
                                                    (401, False), (403, False), (404, False)])
async def test_a_refused_body_is_unwritable_a_refused_endpoint_is_not(
    status: int, unwritable: bool
) -> None:
    transport, _ = replying(status)
    with pytest.raises(RejectedError) as info:
        await HttpSink(URL, transport=transport).write(make_events(1))
    assert isinstance(info.value, UnwritableError) is unwritable


async def test_a_batch_the_encoder_cannot_encode_is_unwritable() -> None:
    transport, seen = replying()
    bad = Event("jetpack_rtc_join", {"session_id": "a\ud800b"})  # a lone surrogate
    with pytest.raises(UnwritableError, match="UnicodeEncodeError"):
        await HttpSink(URL, transport=transport).write([*make_events(1), bad])
    assert seen == []


async def test_connection_errors_are_transient() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(TransientError, match="ConnectError"):
        await HttpSink(URL, transport=httpx.MockTransport(refuse)).write(make_events(1))


async def test_headers_and_gzip() -> None:
    transport, seen = replying()
    sink = HttpSink(URL, transport=transport, gzip=True, headers={"Authorization": "Bearer k"})
    events = make_events(3)
    await sink.write(events)
    (request,) = seen
    assert request.headers["content-encoding"] == "gzip"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["authorization"] == "Bearer k"
    body = json.loads(gzip.decompress(request.content))
    assert body == {"events": [event.to_json() for event in events]}


def test_description_hides_credentials_and_query() -> None:
    assert redact_url("https://user:pw@host:8443/p?api_key=s") == "https://host:8443/p"
    assert HttpSink("https://user:pw@host/p?k=v").description == "https://host/p"


def test_bad_urls_fail_at_construction() -> None:
    with pytest.raises(ValueError, match="http"):
        HttpSink("ftp://host/p")


async def test_recorder_retries_the_exact_sequence_then_delivers() -> None:
    transport, seen = replying(500, 503, 429)
    recorder = HttpRecorder(URL, transport=transport, retry=FAST, flush_interval=0)
    async with recorder:
        for event in make_events(5):
            recorder.record(event)
        with anyio.fail_after(TIMEOUT):
            await recorder.flush()
    stats = recorder.stats
    assert (stats.written, stats.retried, stats.rejected, stats.dropped) == (5, 15, 0, 0)
    assert len(seen) == 4
    # Every attempt carries the same events with the same ids.
    bodies = [json.loads(request.content) for request in seen]
    assert all(body == bodies[0] for body in bodies)


async def test_recorder_does_not_retry_a_4xx() -> None:
    transport, seen = replying(401)
    recorder = HttpRecorder(URL, transport=transport, retry=FAST, flush_interval=0)
    async with recorder:
        for event in make_events(2):
            recorder.record(event)
        with anyio.fail_after(TIMEOUT):
            await recorder.flush()
    assert (recorder.stats.rejected, recorder.stats.retried) == (2, 0)
    assert len(seen) == 1


def refusing(poisoned: set[str]) -> tuple[httpx.MockTransport, list[tuple[list[str], int]]]:
    """A backend answering 400 to any batch holding one of the ``poisoned`` event ids."""
    bodies: list[tuple[list[str], int]] = []

    def handle(request: httpx.Request) -> httpx.Response:
        ids = [item["event_id"] for item in json.loads(request.content)["events"]]
        status = 400 if poisoned & set(ids) else 200
        bodies.append((ids, status))
        return httpx.Response(status)

    return httpx.MockTransport(handle), bodies


async def test_a_400_for_one_event_splits_the_batch_and_sets_that_event_aside(
    tmp_path: Path,
) -> None:
    events = make_events(20)
    transport, bodies = refusing({events[13].event_id})
    recorder = HttpRecorder(
        URL, transport=transport, retry=FAST, flush_interval=3600, spool=tmp_path
    )
    async with recorder:
        for event in events:
            recorder.record(event)
        with anyio.fail_after(TIMEOUT):
            await recorder.flush()
    stats = recorder.stats
    assert (stats.written, stats.dead_lettered, stats.rejected, stats.retried) == (19, 1, 0, 0)
    assert DeadLetters(tmp_path / "dead-letter.jsonl").read() == [events[13]]
    # Bisection: the whole batch, then two halves per level down to the event (20 -> 1).
    assert len(bodies) <= 1 + 2 * 5
    delivered = [i for ids, status in bodies if status == 200 for i in ids]
    assert sorted(delivered) == sorted(e.event_id for e in events if e != events[13])


async def test_without_a_spool_an_event_refused_alone_counts_as_rejected() -> None:
    events = make_events(4)
    transport, _ = refusing({events[0].event_id})
    recorder = HttpRecorder(URL, transport=transport, retry=FAST, flush_interval=0)
    async with recorder:
        for event in events:
            recorder.record(event)
        with anyio.fail_after(TIMEOUT):
            await recorder.flush()
    stats = recorder.stats
    assert (stats.written, stats.rejected, stats.dead_lettered) == (3, 1, 0)


async def test_an_endpoint_refusing_everything_costs_a_bounded_number_of_requests(
    tmp_path: Path,
) -> None:
    # 400 to every body (a wrong encoder, say): bisecting to the end would cost two
    # requests per event; past SPLIT_SET_ASIDE_LIMIT events, failing pieces go aside whole.
    transport, seen = replying(*[400] * 10_000)
    recorder = HttpRecorder(
        URL, transport=transport, retry=FAST, batch_size=500, flush_interval=3600, spool=tmp_path
    )
    async with recorder:
        for event in make_events(500):
            recorder.record(event)
        with anyio.fail_after(TIMEOUT):
            await recorder.flush()
    assert (recorder.stats.dead_lettered, recorder.stats.written) == (500, 0)
    assert len(seen) < 100
    assert len(DeadLetters(tmp_path / "dead-letter.jsonl").read()) == 500


async def test_batches_respect_the_byte_limit() -> None:
    transport, seen = replying()
    recorder = HttpRecorder(
        URL, transport=transport, batch_size=1000, batch_bytes=2_000, flush_interval=3600
    )
    async with recorder:
        for event in make_events(100):
            recorder.record(event)
        with anyio.fail_after(TIMEOUT):
            await recorder.flush()
    assert len(seen) > 1
    assert all(len(request.content) <= 2_100 for request in seen)  # + the envelope
    assert recorder.stats.written == 100


# -- encoders: pure ---------------------------------------------------------

USER = Event(
    "jetpack_rtc_join",
    {"blog_id": 1, "post_id": 2, "session_id": "s", "wp_user_id": 9, "role": "editor"},
    ts=1_700_000_000_123,
    event_id="12345678-1234-5678-1234-567812345678",
)
ANONYMOUS = Event(
    "jetpack_rtc_leave",
    {"blog_id": 1, "post_id": 2, "session_id": "s"},
    ts=1_700_000_000_000,
    event_id="87654321-1234-5678-1234-567812345678",
)


def test_generic_encoder() -> None:
    assert GenericEncoder()([USER]) == {"events": [USER.to_json()]}


def test_tracks_encoder() -> None:
    body = TracksEncoder({"_via_ua": "rtc"})([USER, ANONYMOUS])
    assert body == {
        "events": [
            {
                "_en": "jetpack_rtc_join",
                "_ts": 1_700_000_000_123,
                "_ui": 9,
                "_eid": USER.event_id,
                "blog_id": 1,
                "post_id": 2,
                "session_id": "s",
                "wp_user_id": 9,
                "role": "editor",
            },
            {
                "_en": "jetpack_rtc_leave",
                "_ts": 1_700_000_000_000,
                "_eid": ANONYMOUS.event_id,
                "blog_id": 1,
                "post_id": 2,
                "session_id": "s",
            },
        ],
        "commonProps": {"_via_ua": "rtc"},
    }


def test_posthog_encoder() -> None:
    body = PostHogEncoder("phc_key")([USER, ANONYMOUS])
    assert body == {
        "api_key": "phc_key",
        "batch": [
            {
                "event": "jetpack_rtc_join",
                "distinct_id": "9",
                "properties": dict(USER.props),
                "timestamp": "2023-11-14T22:13:20.123+00:00",
                "uuid": USER.event_id,
            },
            {
                "event": "jetpack_rtc_leave",
                "distinct_id": "1:2:s",
                "properties": dict(ANONYMOUS.props),
                "timestamp": "2023-11-14T22:13:20.000+00:00",
                "uuid": ANONYMOUS.event_id,
            },
        ],
    }


def test_posthog_needs_a_key() -> None:
    with pytest.raises(ValueError, match="api_key"):
        PostHogEncoder("")
    with pytest.raises(ValueError, match="api_key"):
        HttpRecorder(URL, encoder="posthog")


@pytest.mark.parametrize(
    ("encoder", "ids"),
    [
        ("generic", lambda body: [e["event_id"] for e in body["events"]]),
        ("tracks", lambda body: [e["_eid"] for e in body["events"]]),
        ("posthog", lambda body: [e["uuid"] for e in body["batch"]]),
    ],
)
async def test_every_encoder_carries_the_event_id(
    encoder: str, ids: Callable[[dict[str, list[dict[str, str]]]], list[str]]
) -> None:
    transport, seen = replying()
    events = make_events(3)
    recorder = HttpRecorder(URL, transport=transport, encoder=encoder, api_key="k")
    async with recorder:
        for event in events:
            recorder.record(event)
    (request,) = seen
    assert ids(json.loads(request.content)) == [event.event_id for event in events]
