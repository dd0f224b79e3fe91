"""What the engine does when a write fails: `classify` an error, then ask `Outage`. Pure: no I/O.

`classify` is the one place that maps an exception from `Sink.write` to a
`Failure`. A failure is about the backend (``"transient"``: try again later),
about the batch's data (``"data"``: one of its events cannot be written, so the
batch is split to find it; trying the same batch again would fail the same way),
a refusal for good (``"rejected"``), or a sink error nobody translated
(``"unexpected"``).

`Outage` is the writer's view of the backend: healthy, backing off (a burst of
failed writes, retried in place), or spooling (batches that ran out of retries
wait on disk; new batches join them, and the spool is replayed on the retry
schedule). It decides the next `Step` from the failure, the attempt number and
the time the caller passes in; the caller carries the step out.

No batch holds the others back for good. A new batch or a spooled one that fails
on data is split at once. A spooled batch whose replay keeps failing with an
unexpected error (`RetryPolicy.max_attempts` times in a row) is split as if the
failure were about its data: an error that nothing translates and that repeats on
the same events is most likely about them, and splitting keeps every event (what
still fails is set aside, not dropped). A transient failure keeps the batch where
it is: the backend is down, the newer batches would meet the same outage, and the
spool keeps them in order (bounded by ``max_spool_bytes``).

The spool's own size stays the truth about whether anything is spooled: callers
pass it in (``spooled``) rather than this object keeping a copy that could drift.
"""

from __future__ import annotations

import math
import sqlite3
import sys
from dataclasses import dataclass
from typing import Literal

from tracks.retry import RetryPolicy
from tracks.sinks import RejectedError, TransientError, UnwritableError

__all__ = ["DATA_ERRORS", "Failure", "Outage", "Step", "classify"]

FailureKind = Literal["rejected", "transient", "data", "unexpected"]
Action = Literal["retry", "spool", "drop", "reject", "keep", "split"]

DATA_ERRORS: tuple[type[BaseException], ...] = (
    UnwritableError,  # a sink's own word for it (HTTP 400, 413, 422; an unencodable batch)
    OverflowError,  # an int beyond SQLite's 64-bit INTEGER, bound by sqlite3
    UnicodeError,  # a lone surrogate, bound by sqlite3 or encoded to UTF-8
    sqlite3.IntegrityError,  # a constraint the row breaks
    sqlite3.DataError,  # a value too big for the column (SQLITE_TOOBIG)
    sqlite3.InterfaceError,  # a value sqlite3 cannot bind
)
"""Errors from `Sink.write` that are about the data of the batch, not the backend.

A locked database, a full disk or a failed connection is ``sqlite3.OperationalError``
(which the SQLite sink raises as `TransientError`) or the HTTP sink's `TransientError`.
"""


@dataclass(frozen=True, slots=True)
class Failure:
    """What a failed write means.

    Attributes:
        kind: ``"rejected"`` (never send again), ``"transient"`` (try again later),
            ``"data"`` (some event of the batch cannot be written: split the batch,
            set that event aside, write the rest) or ``"unexpected"`` (a sink bug or
            an error it did not translate: retried like a transient one, but logged
            with its traceback).
        retry_after: the backend's requested delay in seconds, if it sent one.
    """

    kind: FailureKind
    retry_after: float | None = None


def _driver_failure(exc: BaseException) -> FailureKind | None:
    """psycopg's errors, read without importing it (an optional extra): SQLSTATE class 22
    (data exception: a number out of range, invalid text), 23 (integrity) and 54000 (a value
    too big to index) are about the data; a lost connection or a restarting server
    (``OperationalError``, ``InterfaceError``) is transient."""
    psycopg = sys.modules.get("psycopg")
    if psycopg is None or not isinstance(exc, psycopg.Error):
        return None
    errors = psycopg.errors
    if isinstance(exc, psycopg.DataError | psycopg.IntegrityError | errors.ProgramLimitExceeded):
        return "data"
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return "transient"
    return None


def classify(exc: BaseException) -> Failure:
    """The `Failure` an exception raised by `Sink.write` stands for."""
    if isinstance(exc, DATA_ERRORS):
        return Failure("data")
    driver = _driver_failure(exc)
    if driver is not None:
        return Failure(driver)
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
            replay it at the next probe; ``"split"`` the batch to find the events
            that cannot be written, set them aside and write the rest.
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
        self._replay_failures = 0  # unexpected failures replaying the oldest batch, in a row

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
        if failure.kind == "data":
            return Step("split")  # not an outage: the backend answered
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
        """The step after replaying the oldest spooled batch failed at ``now``.

        A data failure splits it at once; an unexpected one splits it once it has failed
        ``max_attempts`` replays in a row; a transient one keeps it (the backend is down).
        """
        if failure.kind == "data":
            self._replay_failures = 0
            return Step("split")
        if failure.kind == "rejected":
            self._replay_failures = 0
            return Step("reject")
        if failure.kind == "unexpected":
            self._replay_failures += 1
            if self._replay_failures >= self.retry.max_attempts:
                self._replay_failures = 0
                return Step("split")
        else:
            self._replay_failures = 0  # an outage, not this batch: start counting afresh
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
        self._replay_failures = 0
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
