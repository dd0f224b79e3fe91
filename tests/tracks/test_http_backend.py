"""HttpRecorder against a real HTTP server on 127.0.0.1 that fails on demand."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from tests.tracks.tracks_testing import TIMEOUT, Backend, Reply, files, make_events
from tracks import HttpRecorder, RetryPolicy

FAST = RetryPolicy(max_attempts=3, base_delay=0.002, max_delay=0.01, jitter=0.5)


async def test_aclose_delivers_to_a_real_server() -> None:
    async with Backend() as backend:
        recorder = HttpRecorder(backend.url, flush_interval=3600, gzip=True)
        async with recorder:
            for event in make_events(50):
                recorder.record(event)
            with anyio.fail_after(TIMEOUT):
                await recorder.aclose()
        assert len(backend.received) == 50
        assert backend.requests[0].headers["content-encoding"] == "gzip"


async def test_500_then_recovers() -> None:
    async with Backend() as backend:
        backend.script.extend([Reply(500), Reply(503)])
        async with HttpRecorder(backend.url, retry=FAST, flush_interval=0) as recorder:
            for event in make_events(10):
                recorder.record(event)
            with anyio.fail_after(TIMEOUT):
                await recorder.flush()
        assert [seen.status for seen in backend.requests][:2] == [500, 503]
        assert set(backend.received.values()) == {1}
        assert len(backend.received) == 10
        assert recorder.stats.retried >= 2


@pytest.mark.slow
async def test_429_retry_after_is_honoured() -> None:
    async with Backend() as backend:
        backend.script.append(Reply(429, {"Retry-After": "1"}))
        recorder = HttpRecorder(backend.url, retry=FAST, flush_interval=0)
        async with recorder:
            recorder.record(make_events(1)[0])
            with anyio.fail_after(TIMEOUT):
                await recorder.flush()
        first, second = backend.requests
        assert first.status == 429
        assert second.status == 200
        # The policy alone would wait ~2 ms; the server asked for a second.
        assert second.at - first.at >= 0.95
        assert recorder.stats.written == 1


@pytest.mark.slow
async def test_a_hanging_server_times_out_and_is_retried() -> None:
    async with Backend() as backend:
        backend.script.append(Reply(hang=True))
        recorder = HttpRecorder(backend.url, retry=FAST, flush_interval=0, timeout=0.2)
        async with recorder:
            for event in make_events(3):
                recorder.record(event)
            with anyio.fail_after(TIMEOUT):
                await recorder.flush()
        assert [seen.status for seen in backend.requests] == [None, 200]
        assert len(backend.received) == 3
        assert recorder.stats.retried == 3


async def test_a_4xx_is_rejected_once(caplog: pytest.LogCaptureFixture) -> None:
    async with Backend() as backend:
        backend.default = Reply(401)  # the endpoint refuses us (a 400 splits the batch instead)
        recorder = HttpRecorder(backend.url, retry=FAST, flush_interval=0, batch_size=2)
        async with recorder:
            for event in make_events(6):
                recorder.record(event)
            with anyio.fail_after(TIMEOUT):
                await recorder.flush()
        assert len(backend.requests) == 3  # one per batch, no retries
        assert recorder.stats.rejected == 6
        assert caplog.text.count("rejected") == 1


async def test_connection_refused_spools_and_a_restart_drains(tmp_path: Path) -> None:
    async with Backend() as backend:
        await backend.stop()
        recorder = HttpRecorder(backend.url, retry=FAST, flush_interval=0, spool=tmp_path)
        async with recorder:
            for event in make_events(20):
                recorder.record(event)
            with anyio.fail_after(TIMEOUT):
                await recorder.flush()
            assert recorder.stats.spooled == 20
            assert files(tmp_path)
            await backend.start()
            with anyio.fail_after(TIMEOUT):
                await backend.wait_until(lambda: len(backend.received) == 20)
        assert set(backend.received.values()) == {1}
        assert files(tmp_path) == []


@pytest.mark.slow
async def test_outage_in_the_middle_of_10000_events_delivers_each_exactly_once(
    tmp_path: Path,
) -> None:
    async with Backend() as backend:
        recorder = HttpRecorder(
            backend.url,
            retry=FAST,
            flush_interval=0.001,
            batch_size=100,
            queue_size=20_000,
            spool=tmp_path,
            timeout=0.5,
        )
        events = make_events(10_000)
        async with recorder:
            for event in events[:3_000]:
                recorder.record(event)
            with anyio.fail_after(TIMEOUT):
                await backend.wait_until(lambda: len(backend.received) >= 1_000)

            await backend.stop()  # the backend goes down mid-stream...
            for event in events[3_000:4_000]:
                recorder.record(event)
            backend.script.extend([Reply(500)] * 3)  # ...and fails on its first answers back
            for event in events[4_000:7_000]:
                recorder.record(event)
            with anyio.fail_after(TIMEOUT):
                await recorder.flush()
            assert recorder.stats.spooled > 0

            await backend.start()  # ...and comes back: the spool drains, oldest first
            for event in events[7_000:]:
                recorder.record(event)
            with anyio.fail_after(TIMEOUT):
                await backend.wait_until(lambda: len(backend.received) == 10_000)
                await recorder.aclose()

        assert len(backend.received) == 10_000
        assert set(backend.received) == {event.event_id for event in events}
        assert max(backend.received.values()) == 1
        # Oldest first: the accepted requests, in arrival order, replay the recording order.
        delivered = [i for seen in backend.requests if seen.status == 200 for i in seen.event_ids]
        assert delivered == [event.event_id for event in events]
        stats = recorder.stats
        assert (stats.accepted, stats.written, stats.dropped, stats.rejected) == (
            10_000,
            10_000,
            0,
            0,
        )
        assert files(tmp_path) == []


async def test_shutdown_during_an_outage_keeps_the_spool_for_the_next_run(tmp_path: Path) -> None:
    async with Backend() as backend:
        await backend.stop()
        events = make_events(30)
        first = HttpRecorder(backend.url, retry=FAST, flush_interval=3600, spool=tmp_path)
        async with first:
            for event in events[:20]:
                first.record(event)
        assert (first.stats.spooled, first.stats.written, first.stats.dropped) == (20, 0, 0)
        assert files(tmp_path)

        await backend.start()
        second = HttpRecorder(backend.url, retry=FAST, flush_interval=3600, spool=tmp_path)
        async with second:
            for event in events[20:]:
                second.record(event)
        assert second.stats.written == 30  # the 20 left over, then its own 10
        delivered = [i for seen in backend.requests if seen.status == 200 for i in seen.event_ids]
        assert delivered == [event.event_id for event in events]
        assert files(tmp_path) == []
