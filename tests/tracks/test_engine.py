"""The shared engine (`Tracker`): inbox, drop policy, batching, retries, spool, shutdown."""

from __future__ import annotations

import logging
from pathlib import Path

import anyio
import pytest

from tests.tracks.tracks_testing import TIMEOUT, ScriptedSink, files, make_events
from tracks import Event, RejectedError, RetryPolicy, Tracker, TransientError
from tracks.event import json_text

FAST = RetryPolicy(max_attempts=3, base_delay=0.001, max_delay=0.005, jitter=0)
IDLE = 3600.0  # a flush interval no test waits for


def names(events: list[Event]) -> list[int]:
    return [int(event.props["n"]) for event in events]  # type: ignore[call-overload]


async def test_batches_by_count() -> None:
    sink = ScriptedSink()
    recorder = Tracker(sink, batch_size=10, flush_interval=IDLE)
    for event in make_events(25):
        recorder.record(event)
    async with recorder:
        with anyio.fail_after(TIMEOUT):
            await recorder.flush()
        assert [len(batch) for batch in sink.batches] == [10, 10, 5]
        assert names(sink.events) == list(range(25))
        assert recorder.stats.written == 25


async def test_batches_by_bytes() -> None:
    sink = ScriptedSink()
    events = make_events(10)
    one = len(json_text(events[0].to_json())) + 1  # one event's JSON line
    recorder = Tracker(sink, batch_size=100, batch_bytes=3 * one, flush_interval=IDLE)
    async with recorder:
        for event in events:
            recorder.record(event)
        with anyio.fail_after(TIMEOUT):
            await recorder.flush()
    assert all(1 <= len(batch) <= 3 for batch in sink.batches)
    assert names(sink.events) == list(range(10))


async def test_a_full_batch_is_written_without_waiting_for_the_interval() -> None:
    sink = ScriptedSink()
    async with Tracker(sink, batch_size=5, flush_interval=IDLE) as recorder:
        for event in make_events(5):
            recorder.record(event)
        with anyio.fail_after(TIMEOUT):
            await sink.wait_until(lambda: len(sink.events) == 5)


async def test_zero_interval_writes_as_soon_as_possible() -> None:
    sink = ScriptedSink()
    async with Tracker(sink, batch_size=100, flush_interval=0) as recorder:
        recorder.record(make_events(1)[0])
        with anyio.fail_after(TIMEOUT):
            await sink.wait_until(lambda: len(sink.events) == 1)


async def test_short_interval_writes_a_partial_batch() -> None:
    sink = ScriptedSink()
    async with Tracker(sink, batch_size=100, flush_interval=0.01) as recorder:
        for event in make_events(3):
            recorder.record(event)
        with anyio.fail_after(TIMEOUT):
            await sink.wait_until(lambda: len(sink.events) == 3)


async def test_full_inbox_drops_the_oldest_and_counts_them() -> None:
    sink = ScriptedSink()
    recorder = Tracker(sink, queue_size=10, flush_interval=IDLE)
    for event in make_events(12) + make_events(3, name="jetpack_rtc_leave", start=12):
        recorder.record(event)  # before entering: queued, never blocking
    stats = recorder.stats
    assert (stats.accepted, stats.dropped, stats.queue_depth) == (15, 5, 10)
    assert stats.dropped_by_name == {"jetpack_rtc_join": 5}
    async with recorder:
        with anyio.fail_after(TIMEOUT):
            await recorder.flush()
    assert names(sink.events) == list(range(5, 15))


async def test_drop_newest_policy_keeps_the_queue() -> None:
    sink = ScriptedSink()
    recorder = Tracker(sink, queue_size=10, overflow="drop_newest", flush_interval=IDLE)
    for event in make_events(15):
        recorder.record(event)
    assert recorder.stats.dropped == 5
    with anyio.fail_after(TIMEOUT):
        async with recorder:
            pass
    assert names(sink.events) == list(range(10))


async def test_a_busy_writer_never_blocks_the_caller() -> None:
    sink = ScriptedSink()
    sink.gate = anyio.Event()
    async with Tracker(sink, queue_size=100, batch_size=10, flush_interval=0) as recorder:
        recorder.record(make_events(1)[0])
        with anyio.fail_after(TIMEOUT):
            await sink.wait_until(lambda: sink.attempts == 1)  # the writer is now stuck
        for event in make_events(1000, start=1):
            recorder.record(event)  # returns at once even though nothing drains
        assert recorder.stats.queue_depth == 100
        assert recorder.stats.dropped == 900
        sink.gate.set()
        with anyio.fail_after(TIMEOUT):
            await recorder.flush()
    assert names(sink.events) == [0, *range(901, 1001)]


async def test_aclose_flushes_everything_accepted() -> None:
    sink = ScriptedSink()
    recorder = Tracker(sink, flush_interval=IDLE, batch_size=7)
    async with recorder:
        for event in make_events(100):
            recorder.record(event)
        with anyio.fail_after(TIMEOUT):
            await recorder.aclose()
        assert len(sink.events) == 100
        await recorder.aclose()  # idempotent
    assert sink.closed
    assert recorder.stats.written == 100


async def test_flush_and_aclose_before_entering_raise_and_keep_the_queue() -> None:
    # One lifecycle: only `async with` starts delivery. Events recorded before it wait.
    sink = ScriptedSink()
    recorder = Tracker(sink, flush_interval=IDLE)
    for event in make_events(3):
        recorder.record(event)
    with pytest.raises(RuntimeError, match="async with"):
        await recorder.flush()
    with pytest.raises(RuntimeError, match="async with"):
        await recorder.aclose()
    assert (sink.attempts, recorder.stats.queue_depth, recorder.stats.dropped) == (0, 3, 0)
    with anyio.fail_after(TIMEOUT):
        async with recorder:
            await recorder.flush()
    assert names(sink.events) == [0, 1, 2]


async def test_after_close_record_drops_by_name_and_flush_returns() -> None:
    recorder = Tracker(ScriptedSink())
    with anyio.fail_after(TIMEOUT):
        async with recorder:
            recorder.record(make_events(1)[0])
        recorder.record(make_events(1, name="jetpack_rtc_leave")[0])
        recorder.record("not an event")  # type: ignore[arg-type]
        await recorder.flush()  # nothing left to wait for
        await recorder.aclose()  # idempotent
    stats = recorder.stats
    assert (stats.accepted, stats.written, stats.dropped) == (1, 1, 2)
    assert stats.dropped_by_name == {"jetpack_rtc_leave": 1, "<not an Event>": 1}


async def test_a_recorder_starts_once() -> None:
    recorder = Tracker(ScriptedSink())
    async with recorder:
        with pytest.raises(RuntimeError, match="only once"):
            await recorder.__aenter__()
    with pytest.raises(RuntimeError, match="only once"):
        await recorder.__aenter__()


async def test_transient_failures_are_retried(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tracks")
    sink = ScriptedSink()
    sink.failures.extend([TransientError("boom 1"), TransientError("boom 2")])
    async with Tracker(sink, retry=FAST, flush_interval=IDLE) as recorder:
        for event in make_events(4):
            recorder.record(event)
        with anyio.fail_after(TIMEOUT):
            await recorder.flush()
        stats = recorder.stats
    assert (stats.written, stats.retried, stats.dropped) == (4, 8, 0)
    assert sink.attempts == 3
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # one burst, one line
    assert "recovered after 2 failed attempts" in caplog.text


async def test_unexpected_sink_errors_are_retried_and_logged_with_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = ScriptedSink()
    sink.failures.append(KeyError("bug"))
    async with Tracker(sink, retry=FAST, flush_interval=IDLE) as recorder:
        recorder.record(make_events(1)[0])
        with anyio.fail_after(TIMEOUT):
            await recorder.flush()
    assert recorder.stats.written == 1
    (error,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert error.exc_info is not None


async def test_exhausted_retries_without_a_spool_drop_and_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = ScriptedSink()
    sink.down = True
    async with Tracker(sink, retry=FAST, flush_interval=IDLE, batch_size=5) as recorder:
        for event in make_events(10):
            recorder.record(event)
        with anyio.fail_after(TIMEOUT):
            await recorder.flush()
        stats = recorder.stats
    assert (stats.written, stats.dropped, stats.retried) == (0, 10, 20)
    assert stats.dropped_by_name == {"jetpack_rtc_join": 10}
    assert sink.attempts == 6
    assert len([r for r in caplog.records if "sink unavailable" in r.getMessage()]) == 1


async def test_rejected_batches_are_counted_not_retried_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = ScriptedSink()
    sink.failures.extend([RejectedError("HTTP 400"), RejectedError("HTTP 400")])
    async with Tracker(sink, retry=FAST, flush_interval=IDLE, batch_size=2) as recorder:
        for event in make_events(6):
            recorder.record(event)
        with anyio.fail_after(TIMEOUT):
            await recorder.flush()
        stats = recorder.stats
    assert (stats.rejected, stats.written, stats.retried) == (4, 2, 0)
    assert sink.attempts == 3
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 1


async def test_shutdown_deadline_drops_and_counts_what_is_left() -> None:
    sink = ScriptedSink()
    sink.gate = anyio.Event()  # never opens: the backend hangs
    recorder = Tracker(sink, shutdown_timeout=0.05, flush_interval=0, batch_size=2)
    async with recorder:
        for event in make_events(5):
            recorder.record(event)
        with anyio.fail_after(TIMEOUT):
            await recorder.aclose()
    stats = recorder.stats
    assert (stats.written, stats.dropped, stats.queue_depth) == (0, 5, 0)


async def test_shutdown_deadline_spools_what_is_left(tmp_path: Path) -> None:
    sink = ScriptedSink()
    sink.gate = anyio.Event()
    spool = tmp_path / "spool"
    recorder = Tracker(sink, shutdown_timeout=0.05, flush_interval=0, batch_size=2, spool=spool)
    async with recorder:
        for event in make_events(5):
            recorder.record(event)
        with anyio.fail_after(TIMEOUT):
            await recorder.aclose()
    assert (recorder.stats.spooled, recorder.stats.dropped) == (5, 0)
    assert len(files(spool, "*.jsonl")) == 1

    # The next run sends the spooled batch first, then its own events.
    sink = ScriptedSink()
    async with Tracker(sink, flush_interval=IDLE, spool=spool) as recorder:
        for event in make_events(2, start=5):
            recorder.record(event)
        with anyio.fail_after(TIMEOUT):
            await recorder.flush()
            await sink.wait_until(lambda: len(sink.events) == 7)
    assert names(sink.events) == list(range(7))
    assert recorder.stats.written == 7
    assert files(spool, "*.jsonl") == []


async def test_outage_spools_then_replays_oldest_first(tmp_path: Path) -> None:
    sink = ScriptedSink()
    sink.down = True
    recorder = Tracker(sink, retry=FAST, flush_interval=IDLE, batch_size=4, spool=tmp_path)
    async with recorder:
        for event in make_events(10):
            recorder.record(event)
        with anyio.fail_after(TIMEOUT):
            await recorder.flush()  # returns once everything is spooled
        assert recorder.stats.spooled == 10
        assert recorder.stats.written == 0
        sink.down = False
        for event in make_events(2, start=10):
            recorder.record(event)
        with anyio.fail_after(TIMEOUT):
            await recorder.flush()
            await sink.wait_until(lambda: len(sink.events) == 12)
    assert names(sink.events) == list(range(12))
    stats = recorder.stats
    assert (stats.written, stats.dropped) == (12, 0)
    assert files(tmp_path) == []


async def test_spool_overflow_drops_the_oldest_batches(tmp_path: Path) -> None:
    sink = ScriptedSink()
    sink.down = True
    recorder = Tracker(
        sink, retry=FAST, flush_interval=IDLE, batch_size=5, spool=tmp_path, max_spool_bytes=1500
    )
    async with recorder:
        for event in make_events(40):
            recorder.record(event)
        with anyio.fail_after(TIMEOUT):
            await recorder.flush()
        stats = recorder.stats
        assert stats.dropped > 0
        assert stats.spooled == 40
        assert sum(path.stat().st_size for path in files(tmp_path, "*.jsonl")) <= 1500
        assert stats.dropped_by_name == {"jetpack_rtc_join": stats.dropped}


def test_bad_options_fail_at_construction() -> None:
    for options in (
        {"queue_size": 0},
        {"batch_size": 0},
        {"batch_bytes": 0},
        {"flush_interval": -1},
        {"overflow": "drop_all"},
        {"shutdown_timeout": -1},
    ):
        with pytest.raises(ValueError):  # noqa: PT011 - each message names its knob
            Tracker(ScriptedSink(), **options)  # type: ignore[arg-type]


async def test_a_batch_cancelled_during_its_retry_backoff_is_spooled(tmp_path: Path) -> None:
    # The writer sleeps between two attempts when the shutdown deadline cancels it:
    # the batch left the inbox but was never written, so it must still be spooled.
    sink = ScriptedSink()
    sink.down = True
    spool = tmp_path / "spool"
    slow = RetryPolicy(max_attempts=3, base_delay=IDLE, max_delay=IDLE, jitter=0)
    recorder = Tracker(
        sink, retry=slow, shutdown_timeout=0.05, flush_interval=0, batch_size=5, spool=spool
    )
    async with recorder:
        for event in make_events(5):
            recorder.record(event)
        with anyio.fail_after(TIMEOUT):
            await sink.wait_until(lambda: sink.attempts == 1)  # now in its backoff
            await recorder.aclose()
    assert (recorder.stats.spooled, recorder.stats.dropped, recorder.stats.written) == (5, 0, 0)
    assert len(files(spool, "*.jsonl")) == 1


def write_segment(spool: Path, name: str, data: bytes) -> None:
    spool.mkdir(parents=True, exist_ok=True)
    (spool / name).write_bytes(data)


async def test_unreadable_spool_files_are_counted_by_name(tmp_path: Path) -> None:
    # Left by an earlier run: a batch of 3 with one good line, one torn line and a line
    # that is not even UTF-8; then a "batch of 4" that cannot be read at all.
    good = json_text(make_events(1)[0].to_json()).encode()
    write_segment(tmp_path, "000000000000-3.jsonl", good + b'\n{"name": "jetp\n\xff\xfe\n')
    (tmp_path / "000000000001-4.jsonl").mkdir()  # reading it raises IsADirectoryError
    sink = ScriptedSink()
    with anyio.fail_after(TIMEOUT):
        async with Tracker(sink, flush_interval=IDLE, spool=tmp_path) as recorder:
            await sink.wait_until(lambda: len(sink.events) == 1)
    stats = recorder.stats
    assert names(sink.events) == [0]
    assert (stats.written, stats.dropped) == (1, 6)
    assert stats.dropped_by_name == {"<unreadable spool>": 6}
    assert files(tmp_path, "*.jsonl") == [tmp_path / "000000000001-4.jsonl"]  # a directory


async def test_a_spooled_batch_kept_for_later_counts_its_unreadable_lines_once(
    tmp_path: Path,
) -> None:
    good = [json_text(event.to_json()).encode() for event in make_events(2)]
    write_segment(tmp_path, "000000000000-3.jsonl", b"\n".join([*good, b"garbage"]))
    sink = ScriptedSink()
    sink.failures.extend([TransientError("down"), TransientError("still down")])
    with anyio.fail_after(TIMEOUT):
        async with Tracker(sink, retry=FAST, flush_interval=IDLE, spool=tmp_path) as recorder:
            await sink.wait_until(lambda: len(sink.events) == 2)
    stats = recorder.stats
    assert (sink.attempts, stats.written, stats.retried) == (3, 2, 4)
    assert stats.dropped_by_name == {"<unreadable spool>": 1}
