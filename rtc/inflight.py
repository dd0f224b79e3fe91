"""Calls that run in the background and that shutdown waits for (a bounded time).

The driver hands the cluster's admissions and releases to the task group so that no message
waits on Redis; at shutdown every session must still be released and recorded, so the node
waits for the calls under way before it goes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
from anyio.abc import TaskGroup

__all__ = ["InFlight"]


class InFlight:
    """Runs calls in `task_group`, counted until each is done."""

    def __init__(self, task_group: TaskGroup) -> None:
        self._task_group = task_group
        self._count = 0
        self._done = anyio.Event()

    def start(self, call: Callable[..., Awaitable[None]], *args: object) -> None:
        """Run `call(*args)` in the background."""

        async def counted() -> None:
            try:
                await call(*args)
            finally:
                self._count -= 1
                if not self._count:
                    self._done.set()

        if not self._count:
            self._done = anyio.Event()
        self._count += 1
        self._task_group.start_soon(counted)

    async def settle(self, *, within: float) -> None:
        """Wait (at most `within` seconds) until no call is under way."""
        with anyio.move_on_after(within):
            if self._count:
                await self._done.wait()
