"""One event a sink cannot write never stops recording: it is split from its batch and set
aside (the dead-letter file), the rest is written, and the spool never queues behind it."""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import anyio
import pytest

from tests.tracks.tracks_testing import TIMEOUT, ScriptedSink, files, make_events
from tracks import Event, JSONValue, RetryPolicy, SqliteRecorder, Tracker, TransientError
from tracks.deadletter import DeadLetters
from tracks.spool import Spool

FAST = RetryPolicy(max_attempts=3, base_delay=0.001, max_delay=0.005, jitter=0)
IDLE = 3600.0  # a flush interval no test waits for
TOO_BIG = 2**63  # one past SQLite's 64-bit INTEGER


def bad(**props: JSONValue) -> Event:
    return Event("jetpack_rtc_join", {"blog_id": 1, "post_id": 1, **props})


def stored_ids(path: Path) -> set[str]:
    connection = sqlite3.connect(path)
    try:
        rows = connection.execute("SELECT lower(hex(event_id)) FROM events").fetchall()
    finally:
        connection.close()
    return {row[0] for row in rows}


def ids(events: Sequence[Event]) -> set[str]:
    return {event.event_id.replace("-", "") for event in events}


def dead_letters(path: Path) -> list[Event]:
    if not path.exists():
        return []
    return [Event.from_json(json.loads(line)) for line in path.read_bytes().splitlines()]


async def record(recorder: Tracker, events: Sequence[Event]) -> None:
    for event in events:
        recorder.record(event)
    with anyio.fail_after(TIMEOUT):
        await recorder.flush()


@pytest.mark.parametrize(
    "poison",
    [
        bad(session_id=TOO_BIG),
        bad(wp_user_id=2**70),
        bad(blog_id=-(2**63) - 1),
        Event("jetpack_rtc_join", {"post_id": 1}, ts=2**64),
        bad(session_id="lone \ud800 surrogate"),
    ],
    ids=["session_id", "wp_user_id", "blog_id", "ts", "surrogate"],
)
async def test_sqlite_sets_the_bad_event_aside_and_writes_the_rest(
    tmp_path: Path, poison: Event
) -> None:
    path, spool = tmp_path / "events.sqlite", tmp_path / "spool"
    good = make_events(9)
    recorder = SqliteRecorder(path, retry=FAST, flush_interval=IDLE, spool=spool)
    async with recorder:
        await record(recorder, [*good[:5], poison, *good[5:]])  # one batch of ten
        assert stored_ids(path) == ids(good)
        later = make_events(3, start=9)
        await record(recorder, later)  # nothing queues behind the bad batch
        assert stored_ids(path) == ids(good + later)
        stats = recorder.stats
    assert (stats.written, stats.dead_lettered, stats.spooled, stats.dropped) == (12, 1, 0, 0)
    assert stats.retried == 0  # a data failure is not an outage: nothing to retry
    assert dead_letters(spool / "dead-letter.jsonl") == [poison]
    assert files(spool, "0*.jsonl") == []


async def test_the_bad_event_is_logged_once_without_its_properties(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = SqliteRecorder(tmp_path / "e.sqlite", flush_interval=0, spool=tmp_path / "spool")
    async with recorder:
        for n in range(5):
            await record(recorder, [bad(session_id=TOO_BIG + n, secret="hunter2"), *make_events(2)])
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 2  # the first, and the rest summed up at close
    assert "OverflowError" in lines[0]
    assert "dead-letter.jsonl" in lines[0]
    assert not any("hunter2" in line or str(TOO_BIG) in line for line in lines)
    assert recorder.stats.dead_lettered == 5


async def test_without_a_spool_the_bad_event_counts_as_rejected(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite"
    good = make_events(4)
    async with SqliteRecorder(path, retry=FAST, flush_interval=IDLE) as recorder:
        await record(recorder, [good[0], bad(session_id=TOO_BIG), *good[1:]])
        stats = recorder.stats
    assert stored_ids(path) == ids(good)
    assert (stats.written, stats.rejected, stats.dead_lettered, stats.dropped) == (4, 1, 0, 0)


async def test_a_spooled_batch_with_a_bad_event_is_split_on_replay(tmp_path: Path) -> None:
    # A spool left by a run that could not write it: the bad batch first, a good one after.
    spool = tmp_path / "spool"
    first, second = make_events(5), make_events(4, start=5)
    poison = bad(wp_user_id=2**70)
    Spool(spool).append([*first[:2], poison, *first[2:]])
    Spool(spool).append(second)
    path = tmp_path / "events.sqlite"
    async with SqliteRecorder(path, retry=FAST, flush_interval=IDLE, spool=spool) as recorder:
        later = make_events(2, start=9)
        await record(recorder, later)
        stats = recorder.stats
    assert stored_ids(path) == ids(first + second + later)
    assert dead_letters(spool / "dead-letter.jsonl") == [poison]
    assert files(spool, "0*.jsonl") == []
    assert (stats.written, stats.dead_lettered, stats.dropped) == (11, 1, 0)


async def test_a_bad_event_spooled_during_an_outage_is_set_aside_when_it_ends(
    tmp_path: Path,
) -> None:
    sink = PickySink()
    sink.down = True
    spool = tmp_path / "spool"
    poison = bad(session_id="lone \ud800 surrogate")  # the spool must keep it all the same
    async with Tracker(sink, retry=FAST, flush_interval=IDLE, spool=spool) as recorder:
        await record(recorder, [*make_events(3), poison])
        await record(recorder, make_events(3, start=3))
        assert recorder.stats.spooled == 7
        sink.down = False
        with anyio.fail_after(TIMEOUT):
            await sink.wait_until(lambda: len(sink.events) == 6)
    assert [event.props["n"] for event in sink.events] == list(range(6))
    assert dead_letters(spool / "dead-letter.jsonl") == [poison]


class PickySink(ScriptedSink):
    """Fails on data (OverflowError) for a batch holding a "bad" event, or with ``poison_error``
    for one holding a "poison" event; otherwise like `ScriptedSink`."""

    def __init__(self, poison_error: type[Exception] = KeyError) -> None:
        super().__init__()
        self.poison_error = poison_error

    async def write(self, batch: Sequence[Event]) -> None:
        if not self.down and any("poison" in event.props for event in batch):
            self.attempts += 1
            self._signal()
            raise self.poison_error("poisoned")
        if not self.down and any(event.props.get("session_id") == TOO_BIG for event in batch):
            self.attempts += 1
            self._signal()
            raise OverflowError("Python int too large to convert to SQLite INTEGER")
        if not self.down and any("\ud800" in str(v) for e in batch for v in e.props.values()):
            self.attempts += 1
            self._signal()
            raise UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed")
        await super().write(batch)


async def test_a_segment_that_keeps_failing_unexpectedly_stops_blocking_newer_ones(
    tmp_path: Path,
) -> None:
    # An error nobody translated, on the same events, replay after replay: after
    # max_attempts replays in a row the segment is split as if it were bad data.
    spool = tmp_path / "spool"
    poison = bad(poison=True)
    Spool(spool).append([*make_events(3), poison])
    Spool(spool).append(make_events(2, start=3))
    sink = PickySink()
    async with Tracker(sink, retry=FAST, flush_interval=IDLE, spool=spool) as recorder:
        with anyio.fail_after(TIMEOUT):
            await sink.wait_until(lambda: len(sink.events) == 5)
        assert sink.attempts >= FAST.max_attempts + 2  # tried whole, then split
        await record(recorder, make_events(1, start=5))
        stats = recorder.stats
    assert [event.props["n"] for event in sink.events] == list(range(6))
    assert dead_letters(spool / "dead-letter.jsonl") == [poison]
    assert (stats.written, stats.dead_lettered, stats.dropped) == (6, 1, 0)
    assert files(spool, "0*.jsonl") == []


async def test_a_transient_outage_still_keeps_the_spool_in_order(tmp_path: Path) -> None:
    # "try again later" on every replay is an outage, not a bad segment: nothing is set
    # aside however often it fails, and the batches are sent oldest first once it ends.
    sink = ScriptedSink()
    sink.down = True
    spool = tmp_path / "spool"
    async with Tracker(sink, retry=FAST, flush_interval=IDLE, batch_size=2, spool=spool) as rec:
        await record(rec, make_events(6))
        with anyio.fail_after(TIMEOUT):
            await sink.wait_until(lambda: sink.attempts >= 3 * FAST.max_attempts + 10)
        assert rec.stats.dead_lettered == 0
        sink.down = False
        with anyio.fail_after(TIMEOUT):
            await sink.wait_until(lambda: len(sink.events) == 6)
    assert [event.props["n"] for event in sink.events] == list(range(6))
    assert not (spool / "dead-letter.jsonl").exists()


async def test_an_outage_in_the_middle_of_a_split_loses_nothing(tmp_path: Path) -> None:
    sink = PickySink()
    good = make_events(8)
    poison = bad(session_id=TOO_BIG)
    # The first good piece the split writes meets an outage, twice: the rest is retried.
    sink.failures.extend([TransientError("down")] * 2)
    spool = tmp_path / "spool"
    async with Tracker(sink, retry=FAST, flush_interval=IDLE, spool=spool) as recorder:
        await record(recorder, [*good[:2], poison, *good[2:]])
        with anyio.fail_after(TIMEOUT):
            await sink.wait_until(lambda: len(sink.events) == 8)
        stats = recorder.stats
    assert sorted(event.props["n"] for event in sink.events) == list(range(8))  # type: ignore[type-var]
    assert dead_letters(spool / "dead-letter.jsonl") == [poison]
    assert (stats.dead_lettered, stats.dropped) == (1, 0)


async def test_a_dead_letter_file_that_cannot_be_written_drops_and_counts(
    tmp_path: Path,
) -> None:
    letters = tmp_path / "letters.jsonl"
    letters.mkdir()  # writing it fails with an OSError
    sink = PickySink()
    async with Tracker(sink, flush_interval=IDLE, dead_letter=letters) as recorder:
        await record(recorder, [bad(session_id=TOO_BIG), *make_events(2)])
        stats = recorder.stats
    assert (stats.written, stats.dead_lettered, stats.dropped) == (2, 0, 1)
    assert stats.dropped_by_name == {"jetpack_rtc_join": 1}


def test_the_dead_letter_file_is_bounded(tmp_path: Path) -> None:
    letters = DeadLetters(tmp_path / "d" / "letters.jsonl", max_bytes=1000)
    poison = bad(session_id="lone \ud800 surrogate")
    assert letters.append([poison])
    assert letters.path.read_bytes().isascii()
    while letters.append(make_events(1)):
        pass
    assert letters.path.stat().st_size <= 1000
    assert letters.read()[0] == poison
    with pytest.raises(ValueError, match="max_bytes"):
        DeadLetters(tmp_path / "x", max_bytes=0)
