"""Background calls that shutdown waits for: every one finishes first, and a hung one
holds shutdown no longer than the bound."""

from __future__ import annotations

import anyio

from rtc.inflight import InFlight


async def test_settle_returns_once_every_call_under_way_has_finished() -> None:
    released: list[int] = []
    gates = {1: anyio.Event(), 2: anyio.Event()}
    settled = anyio.Event()

    async def release(session: int) -> None:
        await gates[session].wait()
        released.append(session)

    async def shutdown(calls: InFlight) -> None:
        await calls.settle(within=10)
        settled.set()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            calls = InFlight(group)
            calls.start(release, 1)
            calls.start(release, 2)
            group.start_soon(shutdown, calls)
            gates[1].set()
            await anyio.wait_all_tasks_blocked()  # call 1 done, call 2 parked
            assert released == [1]
            assert not settled.is_set()  # a call is still under way
            gates[2].set()
            await settled.wait()
            assert released == [1, 2]


async def test_a_hung_call_holds_settle_no_longer_than_its_bound() -> None:
    async def hung() -> None:
        await anyio.Event().wait()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            calls = InFlight(group)
            calls.start(hung)
            before = anyio.current_time()
            await calls.settle(within=0.2)
            assert 0.2 <= anyio.current_time() - before < 2
            group.cancel_scope.cancel()
