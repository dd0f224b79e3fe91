"""Token expiry: one task closes every connection whose token has run out."""

from __future__ import annotations

import heapq
import logging
import time
from collections.abc import Callable

import anyio
from anyio.abc import TaskStatus

__all__ = ["TokenExpiry"]

logger = logging.getLogger(__name__)

_MAX_NAP = 1.0  # seconds: a token added meanwhile is looked at within this long


class TokenExpiry:
    """Calls `expire(connection)` once a connection's token has expired.

    Args:
        expire: what to do with a connection whose token ran out (a no-op for one gone).
        clock: seconds since the epoch (tokens' `exp` is in those).
    """

    def __init__(
        self, expire: Callable[[int], None], *, clock: Callable[[], float] = time.time
    ) -> None:
        self._expire = expire
        self._clock = clock
        self._deadlines: list[tuple[float, int]] = []

    def watch(self, connection: int, expires_at: float) -> None:
        heapq.heappush(self._deadlines, (expires_at, connection))

    def due(self, now: float) -> list[int]:
        """Take the connections whose deadline has passed."""
        due = []
        while self._deadlines and self._deadlines[0][0] <= now:
            due.append(heapq.heappop(self._deadlines)[1])
        return due

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Expire connections as their tokens run out, until cancelled."""
        task_status.started()
        while True:
            now = self._clock()
            for connection in self.due(now):
                self._expire(connection)
            delay = self._deadlines[0][0] - now if self._deadlines else _MAX_NAP
            await anyio.sleep(min(max(delay, 0.01), _MAX_NAP))
