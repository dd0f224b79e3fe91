"""MemoryRecorder (the test double) and NullRecorder."""

from __future__ import annotations

import anyio
import pytest

from tests.tracks.tracks_testing import TIMEOUT, make_events
from tracks import Event, MemoryRecorder, NullRecorder


async def test_keeps_events_in_order_at_once() -> None:
    recorder = MemoryRecorder()
    events = make_events(3)
    for event in events:
        recorder.record(event)
    assert recorder.events == events
    assert recorder.stats.accepted == recorder.stats.written == 3


async def test_wait_for_returns_an_already_recorded_match() -> None:
    recorder = MemoryRecorder()
    events = make_events(3)
    for event in events:
        recorder.record(event)
    with anyio.fail_after(TIMEOUT):
        found = await recorder.wait_for(lambda e: e.props["n"] == 1)
    assert found is events[1]


async def test_wait_for_returns_the_next_match() -> None:
    recorder = MemoryRecorder()
    leave = Event("jetpack_rtc_leave", {"session_id": "a"})
    result: list[Event] = []

    async def waiter() -> None:
        result.append(await recorder.wait_for(lambda e: e.name == "jetpack_rtc_leave"))

    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()  # the waiter has scanned and is parked
            recorder.record(make_events(1)[0])
            recorder.record(leave)
    assert result == [leave]


async def test_a_failing_predicate_reaches_the_waiter_not_the_recorder() -> None:
    recorder = MemoryRecorder()

    def broken(event: Event) -> bool:
        raise KeyError("oops")

    errors: list[BaseException] = []

    async def waiter() -> None:
        try:
            await recorder.wait_for(broken)
        except KeyError as exc:
            errors.append(exc)

    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            recorder.record(make_events(1)[0])  # must not raise
    assert len(errors) == 1


async def test_bounded_and_closed_drops_are_counted() -> None:
    recorder = MemoryRecorder(max_events=2)
    async with recorder:
        for event in make_events(3):
            recorder.record(event)
    recorder.record(make_events(1)[0])
    assert [event.props["n"] for event in recorder.events] == [1, 2]
    assert recorder.stats.dropped == 2
    assert recorder.stats.dropped_by_name == {"jetpack_rtc_join": 2}
    with pytest.raises(ValueError, match="max_events"):
        MemoryRecorder(max_events=0)


async def test_null_recorder_discards() -> None:
    async with NullRecorder() as recorder:
        recorder.record(make_events(1)[0])
        await recorder.flush()
    assert recorder.stats.accepted == 1
    assert recorder.description == "none"
