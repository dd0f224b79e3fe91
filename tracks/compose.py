"""Recorders made of recorders: `FanoutRecorder` (many destinations) and `SampledRecorder`."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from functools import reduce
from types import TracebackType
from typing import Self

import anyio

from tracks.event import Event
from tracks.recorder import Recorder, RecorderStats
from tracks.sampling import props_in_sample

__all__ = ["FanoutRecorder", "SampledRecorder"]

logger = logging.getLogger(__name__)


class FanoutRecorder:
    """Sends every event to several recorders; a failing one never affects the others.

    Each child keeps its own queue, so a slow or broken destination fills only its
    own inbox. `stats` adds the children's counters up. A child whose `record()` breaks
    its promise and raises is contained: counted in `failures`, logged once until it
    records again.

    One lifecycle, like its children's: ``async with`` enters every child (and leaves
    them all, closing them concurrently so their shutdown deadlines overlap).
    `record()` forwards at any time; `flush()` and `aclose()` before entering raise
    `RuntimeError`.

    Args:
        *recorders: the destinations.
    """

    def __init__(self, *recorders: Recorder) -> None:
        if not recorders:
            raise ValueError("FanoutRecorder needs at least one recorder")
        self.recorders = recorders
        self.description = "fanout(" + ", ".join(r.description for r in recorders) + ")"
        self._stack: AsyncExitStack | None = None
        self._entered = False
        self.failures = 0
        self._failing: set[int] = set()  # children whose last record() raised, by index

    def record(self, event: Event) -> None:
        for index, recorder in enumerate(self.recorders):
            try:
                recorder.record(event)
            except Exception:  # a recorder that breaks its promise must not starve the rest
                self.failures += 1
                if index not in self._failing:
                    self._failing.add(index)
                    logger.exception("%s: record() raised; containing it", recorder.description)
            else:
                if self._failing:
                    self._failing.discard(index)

    async def flush(self) -> None:
        """Flush every child concurrently; one that fails is logged, the others still flush.

        Raises:
            RuntimeError: the fanout was never entered.
        """
        self._check_entered("flush")
        await self._each(lambda recorder: recorder.flush(), "flush")

    async def aclose(self) -> None:
        """Close every child concurrently. Idempotent.

        Raises:
            RuntimeError: the fanout was never entered.
        """
        self._check_entered("aclose")
        await self._each(lambda recorder: recorder.aclose(), "close")

    def _check_entered(self, verb: str) -> None:
        if not self._entered:
            raise RuntimeError(
                f"{self.description}: {verb}() before the recorder was started;"
                " use `async with recorder:`"
            )

    async def _each(self, action: Callable[[Recorder], Awaitable[None]], verb: str) -> None:
        async def run(recorder: Recorder) -> None:
            try:
                await action(recorder)
            except Exception:
                logger.exception("%s: %s failed", recorder.description, verb)

        async with anyio.create_task_group() as task_group:
            for recorder in self.recorders:
                task_group.start_soon(run, recorder)

    async def __aenter__(self) -> Self:
        async with AsyncExitStack() as stack:
            for recorder in self.recorders:
                await stack.enter_async_context(recorder)
            self._stack = stack.pop_all()
        self._entered = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        # Close all children concurrently first, so their shutdown deadlines overlap.
        await self.aclose()
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.__aexit__(exc_type, exc, traceback)

    @property
    def stats(self) -> RecorderStats:
        return reduce(lambda a, b: a + b, (r.stats for r in self.recorders))


class SampledRecorder:
    """Keeps a deterministic fraction of sessions, and every event of a kept session.

    Whether a session is kept depends only on its ``blog_id``, ``post_id`` and
    ``session_id`` (`tracks.sampling.props_in_sample`), so every process, the stream
    router and the browser client keep the same sessions at the same rate.

    Args:
        recorder: where kept events go.
        rate: fraction of sessions to keep, in [0, 1].
    """

    def __init__(self, recorder: Recorder, rate: float) -> None:
        if not 0 <= rate <= 1:
            raise ValueError(f"rate must be within [0, 1], got {rate}")
        self.recorder = recorder
        self.rate = rate
        self.description = f"{recorder.description} (sampling {rate:.0%} of sessions)"
        self.kept = 0
        self.skipped = 0

    def keeps(self, event: Event) -> bool:
        """Whether this event's session is in the sample."""
        return props_in_sample(event.props, self.rate)

    def record(self, event: Event) -> None:
        try:
            keep = self.keeps(event)
        except Exception:  # e.g. not an Event: let the inner recorder count it
            keep = True
        if keep:
            self.kept += 1
            self.recorder.record(event)
        else:
            self.skipped += 1

    async def flush(self) -> None:
        await self.recorder.flush()

    async def aclose(self) -> None:
        await self.recorder.aclose()

    async def __aenter__(self) -> Self:
        await self.recorder.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.recorder.__aexit__(exc_type, exc, traceback)

    @property
    def stats(self) -> RecorderStats:
        return self.recorder.stats
