"""classify() and Outage, as tables. Pure: no sink, no clock, no event loop."""

from __future__ import annotations

import math
import sqlite3

import pytest

from tracks import RejectedError, RetryPolicy, TransientError
from tracks.outage import Failure, Outage, Step, classify
from tracks.sinks import UnwritableError

# No jitter: every delay below is exact. Attempt n waits 1, 2, 4, ... seconds.
POLICY = RetryPolicy(max_attempts=3, base_delay=1.0, multiplier=2.0, max_delay=60.0, jitter=0)

TRANSIENT = Failure("transient")
UNEXPECTED = Failure("unexpected")
REJECTED = Failure("rejected")
DATA = Failure("data")


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (RejectedError("HTTP 400"), Failure("rejected")),
        (TransientError("HTTP 503"), Failure("transient")),
        (TransientError("HTTP 429", retry_after=7.0), Failure("transient", 7.0)),
        (KeyError("a sink bug"), Failure("unexpected")),
        (OSError("disk full"), Failure("unexpected")),
        # About the data of the batch, not the backend: split it.
        (UnwritableError("HTTP 400"), DATA),
        (OverflowError("Python int too large to convert to SQLite INTEGER"), DATA),
        (UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"), DATA),
        (sqlite3.IntegrityError("NOT NULL constraint failed: events.name"), DATA),
        (sqlite3.DataError("string or blob too big"), DATA),
        (sqlite3.InterfaceError("Error binding parameter 1"), DATA),
        # A locked database or a full disk: the SQLite sink's TransientError, or unexpected.
        (sqlite3.OperationalError("database is locked"), Failure("unexpected")),
    ],
)
def test_classify(exc: Exception, expected: Failure) -> None:
    assert classify(exc) == expected


@pytest.mark.parametrize(
    ("spool", "failure", "attempt", "closing", "expected"),
    [
        # Retried in place while attempts remain; only the first failure is announced.
        (False, TRANSIENT, 1, False, Step("retry", delay=1.0, announce=True)),
        (True, TRANSIENT, 1, False, Step("retry", delay=1.0, announce=True)),
        (True, UNEXPECTED, 2, False, Step("retry", delay=2.0, announce=True)),
        (True, Failure("transient", 30.0), 1, False, Step("retry", delay=30.0, announce=True)),
        # Out of attempts: spooled, or dropped without a spool.
        (True, TRANSIENT, 3, False, Step("spool", announce=True)),
        (False, TRANSIENT, 3, False, Step("drop", announce=True)),
        # Shutting down: no time for retries when a spool can keep the batch.
        (True, TRANSIENT, 1, True, Step("spool", announce=True)),
        (False, TRANSIENT, 1, True, Step("retry", delay=1.0, announce=True)),
        # Refused for good: never retried, never spooled, not an outage.
        (True, REJECTED, 1, False, Step("reject")),
        (False, REJECTED, 3, True, Step("reject")),
        # Bad data: split at once, whatever the attempt, the spool or the shutdown.
        (True, DATA, 1, False, Step("split")),
        (False, DATA, 3, True, Step("split")),
    ],
)
def test_write_failed(
    spool: bool, failure: Failure, attempt: int, closing: bool, expected: Step
) -> None:
    outage = Outage(POLICY, spool=spool)
    if closing:
        outage.begin_close()
    assert outage.write_failed(failure, attempt, now=100.0) == expected


def test_a_burst_is_announced_once_and_its_size_reported_on_recovery() -> None:
    outage = Outage(POLICY, spool=True)
    steps = [outage.write_failed(TRANSIENT, attempt, now=0.0) for attempt in (1, 2, 3)]
    assert [step.announce for step in steps] == [True, False, False]
    assert outage.failing
    assert outage.recovered() == 3
    assert not outage.failing
    assert outage.recovered() == 0  # no burst, nothing to report
    assert outage.write_failed(TRANSIENT, 1, now=0.0).announce  # a new burst


def test_a_rejection_neither_starts_nor_ends_a_burst() -> None:
    outage = Outage(POLICY, spool=True)
    outage.write_failed(REJECTED, 1, now=0.0)
    assert not outage.failing
    outage.write_failed(TRANSIENT, 1, now=0.0)
    outage.replay_failed(REJECTED, now=0.0)
    assert outage.failures == 1


@pytest.mark.parametrize(
    ("spool", "spooled", "expected"),
    [(True, 0, "deliver"), (True, 2, "spool"), (False, 0, "deliver"), (False, 2, "deliver")],
)
def test_route_joins_the_spool_while_it_holds_anything(
    spool: bool, spooled: int, expected: str
) -> None:
    assert Outage(POLICY, spool=spool).route(spooled=spooled) == expected


def test_spooling_then_replaying_on_the_retry_schedule() -> None:
    outage = Outage(POLICY, spool=True)
    # A batch runs out of its 3 attempts at t=100: replay after the 3rd backoff (4 s).
    assert outage.write_failed(TRANSIENT, 3, now=100.0).action == "spool"
    assert outage.probe_at(spooled=1) == 104.0
    assert [outage.replay_due(spooled=1, now=t) for t in (103.9, 104.0)] == [False, True]
    assert not outage.replay_due(spooled=0, now=104.0)  # nothing spooled, nothing to replay
    assert outage.probe_at(spooled=0) == math.inf
    # Each failed replay backs off further: attempts 4 and 5 wait 8 and 16 s.
    assert outage.replay_failed(TRANSIENT, now=104.0) == Step("keep")
    assert outage.probe_at(spooled=1) == 112.0
    assert outage.replay_failed(Failure("transient", 100.0), now=112.0) == Step("keep")
    assert outage.probe_at(spooled=1) == 212.0  # Retry-After (100 s) is the floor
    # The backend is back: the next spooling starts the schedule afresh.
    assert outage.recovered() == 3
    outage.write_failed(TRANSIENT, 1, now=300.0)
    assert outage.write_failed(TRANSIENT, 3, now=300.0).action == "spool"
    assert outage.probe_at(spooled=1) == 304.0


def test_a_rejected_replay_is_given_up_not_kept() -> None:
    outage = Outage(POLICY, spool=True)
    assert outage.replay_failed(REJECTED, now=0.0) == Step("reject")


def test_shutdown_replays_at_once_and_gives_the_spool_max_attempts() -> None:
    outage = Outage(POLICY, spool=True)
    outage.write_failed(TRANSIENT, 3, now=100.0)  # next probe at 104
    outage.begin_close()
    assert outage.replay_due(spooled=1, now=100.0)  # no waiting for the schedule
    for _ in range(POLICY.max_attempts - 1):
        outage.replay_failed(TRANSIENT, now=100.0)
        assert outage.replaying(spooled=1)
    outage.replay_failed(TRANSIENT, now=100.0)
    # Given up for this run: the batches stay on disk for the next one.
    assert not outage.replaying(spooled=1)
    assert not outage.replay_due(spooled=1, now=math.inf)
    assert outage.probe_at(spooled=1) == math.inf


def test_without_a_spool_nothing_is_ever_replayed() -> None:
    outage = Outage(POLICY, spool=False)
    assert not outage.replaying(spooled=3)
    assert outage.probe_at(spooled=3) == math.inf


def test_data_failures_are_no_outage() -> None:
    outage = Outage(POLICY, spool=True)
    outage.write_failed(DATA, 1, now=0.0)
    assert outage.replay_failed(DATA, now=0.0) == Step("split")
    assert not outage.failing
    assert outage.probe_at(spooled=1) == 0.0  # the schedule is untouched


def test_a_replay_failing_unexpectedly_in_a_row_is_split_after_max_attempts() -> None:
    outage = Outage(POLICY, spool=True)
    kept = [outage.replay_failed(UNEXPECTED, now=0.0) for _ in range(POLICY.max_attempts - 1)]
    assert {step.action for step in kept} == {"keep"}
    assert outage.replay_failed(UNEXPECTED, now=0.0) == Step("split")
    # The count starts afresh for the next batch.
    assert outage.replay_failed(UNEXPECTED, now=0.0).action == "keep"


def test_a_transient_failure_keeps_the_batch_however_often_and_resets_the_count() -> None:
    outage = Outage(POLICY, spool=True)
    for _ in range(POLICY.max_attempts - 1):
        outage.replay_failed(UNEXPECTED, now=0.0)
    # An outage in between: the batch is not what fails, so it is not split.
    assert outage.replay_failed(TRANSIENT, now=0.0).action == "keep"
    assert outage.replay_failed(UNEXPECTED, now=0.0).action == "keep"
    steps = [outage.replay_failed(TRANSIENT, now=0.0) for _ in range(10 * POLICY.max_attempts)]
    assert {step.action for step in steps} == {"keep"}
