"""FanoutRecorder and SampledRecorder."""

from __future__ import annotations

import anyio
import pytest

from tests.tracks.tracks_testing import TIMEOUT, ScriptedSink, make_events
from tracks import (
    Event,
    FanoutRecorder,
    MemoryRecorder,
    Recorder,
    RetryPolicy,
    SampledRecorder,
    Tracker,
)


async def test_fanout_isolates_a_failing_destination() -> None:
    broken = ScriptedSink()
    broken.down = True
    memory = MemoryRecorder()
    failing = Tracker(broken, retry=RetryPolicy(max_attempts=2, base_delay=0.001), flush_interval=0)
    fanout = FanoutRecorder(memory, failing)
    assert isinstance(fanout, Recorder)
    assert fanout.description == "fanout(memory:, scripted:)"
    async with fanout:
        for event in make_events(5):
            fanout.record(event)
        assert len(memory.events) == 5  # not held back by the broken one
        with anyio.fail_after(TIMEOUT):
            await fanout.flush()
    stats = fanout.stats
    assert (stats.accepted, stats.written, stats.dropped) == (10, 5, 5)


class Raising:
    """A recorder that breaks the never-raise promise."""

    description = "raising:"

    def record(self, event: Event) -> None:
        raise RuntimeError("broken recorder")


async def test_fanout_survives_a_recorder_that_raises(
    caplog: pytest.LogCaptureFixture,
) -> None:
    memory = MemoryRecorder()
    fanout = FanoutRecorder(Raising(), memory)  # type: ignore[arg-type]
    for event in make_events(3):
        fanout.record(event)
    assert len(memory.events) == 3
    assert fanout.failures == 3
    # Logged once for the burst, not once per event.
    assert [r.getMessage() for r in caplog.records if "raising:" in r.getMessage()] == [
        "raising:: record() raised; containing it"
    ]


def sessions(count: int) -> list[Event]:
    return [
        Event("jetpack_rtc_join", {"blog_id": 1, "post_id": n % 7, "session_id": f"s{n}"})
        for n in range(count)
    ]


async def test_sampling_keeps_whole_sessions_deterministically() -> None:
    memory = MemoryRecorder(max_events=None)
    sampled = SampledRecorder(memory, 0.25)
    joins = sessions(4000)
    for event in joins:
        sampled.record(event)
    kept = {event.props["session_id"] for event in memory.events}
    assert 0.22 < len(kept) / 4000 < 0.28
    # Later events of a kept session are kept; of a skipped one, skipped.
    for event in joins[:200]:
        leave = Event("jetpack_rtc_leave", dict(event.props))
        assert sampled.keeps(leave) == (event.props["session_id"] in kept)
    # Another process with the same settings keeps the same sessions.
    again = SampledRecorder(MemoryRecorder(max_events=None), 0.25)
    assert all(again.keeps(event) == sampled.keeps(event) for event in joins)
    assert sampled.kept + sampled.skipped == 4000


async def test_sampling_extremes() -> None:
    everything = SampledRecorder(MemoryRecorder(), 1.0)
    nothing = SampledRecorder(MemoryRecorder(), 0.0)
    assert all(everything.keeps(event) for event in sessions(100))
    assert not any(nothing.keeps(event) for event in sessions(100))
    async with everything:
        everything.record(sessions(1)[0])
    assert everything.stats.accepted == 1


async def test_fanout_has_one_lifecycle() -> None:
    sink = ScriptedSink()
    memory = MemoryRecorder()
    fanout = FanoutRecorder(memory, Tracker(sink, flush_interval=3600))
    fanout.record(make_events(1)[0])  # before entering: kept, and queued
    assert len(memory.events) == 1
    with pytest.raises(RuntimeError, match="async with"):
        await fanout.flush()
    with pytest.raises(RuntimeError, match="async with"):
        await fanout.aclose()
    with anyio.fail_after(TIMEOUT):
        async with fanout:
            await fanout.flush()
            assert len(sink.events) == 1
        await fanout.aclose()  # idempotent after leaving
    fanout.record(make_events(1)[0])  # after closing: dropped and counted by each child
    assert fanout.stats.dropped_by_name == {"jetpack_rtc_join": 2}
