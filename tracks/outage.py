"""What the engine does when a write fails: `classify` an error, then ask `Outage`. Pure: no I/O.

`classify` is the one place that maps an exception from `Sink.write` to a
`Failure`. `Outage` is the writer's view of the backend: healthy, backing off
(a burst of failed writes, retried in place), or spooling (batches that ran out
of retries wait on disk; new batches join them, and the spool is replayed on the
retry schedule). It decides the next `Step` from the failure, the attempt number
and the time the caller passes in; the caller carries the step out.

The spool's own size stays the truth about whether anything is spooled: callers
pass it in (``spooled``) rather than this object keeping a copy that could drift.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from tracks.retry import RetryPolicy
from tracks.sinks import RejectedError, TransientError

__all__ = ["Failure", "Outage", "Step", "classify"]

FailureKind = Literal["rejected", "transient", "unexpected"]
Action = Literal["retry", "spool", "drop", "reject", "keep"]


@dataclass(frozen=True, slots=True)
class Failure:
    """What a failed write means.

    Attributes:
        kind: ``"rejected"`` (never send again), ``"transient"`` (try again later) or
            ``"unexpected"`` (a sink bug or an error it did not translate: retried
            like a transient one, but logged with its traceback).
        retry_after: the backend's requested delay in seconds, if it sent one.
    """

    kind: FailureKind
    retry_after: float | None = None


def classify(exc: BaseException) -> Failure:
    """The `Failure` an exception raised by `Sink.write` stands for."""
    if isinstance(exc, RejectedError):
        return Failure("rejected")
    if isinstance(exc, TransientError):
        return Failure("transient", exc.retry_after)
    return Failure("unexpected")


@dataclass(frozen=True, slots=True)
class Step:
    """What the writer does after a failed write.

    Attributes:
        action: ``"retry"`` the batch after ``delay``; ``"spool"`` it (retries ran
            out, or shutdown leaves no time for them); ``"drop"`` and count it
            (retries ran out and there is no spool); ``"reject"`` it (count it as
            rejected, never retry); ``"keep"`` a spooled batch where it is and
            replay it at the next probe.
        delay: seconds to wait before a ``"retry"``.
        announce: this failure starts a burst: log it. The rest of the burst is only
            counted, and `Outage.recovered` reports its size when it ends.
    """

    action: Action
    delay: float = 0.0
    announce: bool = False


class Outage:
    """The backend's state as the writer sees it, and the decisions that follow from it.

    Args:
        retry: when to try again, and when to give up on a batch.
        spool: whether batches that run out of retries can go to a spool.
    """

    def __init__(self, retry: RetryPolicy, *, spool: bool) -> None:
        self.retry = retry
        self.spool = spool
        self.failures = 0  # failed writes in the current burst
        self.next_probe = 0.0  # monotonic time the spool may be replayed again
        self._probe_attempt = 0  # failed attempts behind next_probe
        self._closing = False
        self._close_failures = 0  # replays that failed since shutdown began

    @property
    def failing(self) -> bool:
        """Whether the last write failed (a burst is under way)."""
        return self.failures > 0

    def route(self, *, spooled: int) -> Literal["deliver", "spool"]:
        """Where a new batch goes: to the sink, or behind ``spooled`` batches on disk.

        While the spool holds anything, new batches join it, so that the backend later
        receives everything oldest first.
        """
        return "spool" if self.spool and spooled else "deliver"

    def write_failed(self, failure: Failure, attempt: int, *, now: float) -> Step:
        """The step after attempt ``attempt`` (from 1) of a new batch failed at ``now``."""
        if failure.kind == "rejected":
            return Step("reject")
        announce = self._fail()
        delay = self.retry.delay(attempt, failure.retry_after)
        if delay is not None and not (self._closing and self.spool):
            return Step("retry", delay=delay, announce=announce)
        if not self.spool:
            return Step("drop", announce=announce)
        # The spool is replayed on the same schedule the batch was retried on.
        self._probe_attempt = attempt
        self.next_probe = now + self.retry.backoff(attempt, failure.retry_after)
        return Step("spool", announce=announce)

    def replay_failed(self, failure: Failure, *, now: float) -> Step:
        """The step after replaying the oldest spooled batch failed at ``now``."""
        if failure.kind == "rejected":
            return Step("reject")
        announce = self._fail()
        self._probe_attempt += 1
        self.next_probe = now + self.retry.backoff(self._probe_attempt, failure.retry_after)
        if self._closing:
            self._close_failures += 1
        return Step("keep", announce=announce)

    def recovered(self) -> int:
        """Note a successful write; return the size of the burst it ended (0: none)."""
        failures, self.failures = self.failures, 0
        self._probe_attempt = 0
        return failures

    def begin_close(self) -> None:
        """Shutdown began: replay the spool at once, and give it ``max_attempts`` more tries."""
        self._closing = True
        self._close_failures = 0
        self.next_probe = 0.0

    def replaying(self, *, spooled: int) -> bool:
        """Whether ``spooled`` batches wait for another attempt.

        At shutdown the spool gets the policy's ``max_attempts``; what is still
        spooled after that stays on disk for the next run.
        """
        if not (self.spool and spooled):
            return False
        return not self._closing or self._close_failures < self.retry.max_attempts

    def replay_due(self, *, spooled: int, now: float) -> bool:
        """Whether to replay the oldest spooled batch now."""
        return self.replaying(spooled=spooled) and now >= self.next_probe

    def probe_at(self, *, spooled: int) -> float:
        """When the writer must wake up for the spool (infinity: it need not)."""
        return self.next_probe if self.replaying(spooled=spooled) else math.inf

    def _fail(self) -> bool:
        self.failures += 1
        return self.failures == 1
