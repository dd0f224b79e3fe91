"""RetryPolicy and Retry-After, as tables. Pure."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from tracks.retry import RetryPolicy, parse_retry_after

POLICY = RetryPolicy(max_attempts=4, base_delay=1.0, multiplier=2.0, max_delay=5.0, jitter=0.5)


@pytest.mark.parametrize(
    ("attempt", "retry_after", "rand", "expected"),
    [
        (1, None, 0.0, 1.0),  # base delay, no jitter drawn
        (2, None, 0.0, 2.0),
        (3, None, 0.0, 4.0),
        (4, None, 0.0, 5.0),  # capped by max_delay
        (50, None, 0.0, 5.0),
        (1, None, 1.0, 0.5),  # jitter removes up to half
        (3, None, 0.5, 3.0),
        (1, 10.0, 0.0, 10.0),  # Retry-After is the floor
        (3, 2.0, 0.0, 4.0),  # ...not a ceiling
        (1, 10_000.0, 0.0, 300.0),  # ...and is capped
        (1, -5.0, 1.0, 0.5),  # a negative header is ignored
    ],
)
def test_backoff_table(
    attempt: int, retry_after: float | None, rand: float, expected: float
) -> None:
    assert POLICY.backoff(attempt, retry_after, rand=rand) == pytest.approx(expected)


def test_delay_gives_up_after_max_attempts() -> None:
    assert [POLICY.delay(n, rand=0.0) for n in (1, 2, 3, 4, 5)] == [1.0, 2.0, 4.0, None, None]


def test_random_jitter_stays_in_range() -> None:
    delays = {POLICY.backoff(2) for _ in range(200)}
    assert all(1.0 <= delay <= 2.0 for delay in delays)
    assert len(delays) > 1


def test_huge_attempt_numbers_do_not_overflow() -> None:
    assert RetryPolicy(max_delay=60).backoff(10_000, rand=0.0) == 60


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_attempts": 0},
        {"base_delay": -1},
        {"multiplier": 0.5},
        {"jitter": 1.5},
        {"max_delay": -1},
    ],
)
def test_bad_policies_fail_at_construction(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_attempts_count_from_one() -> None:
    with pytest.raises(ValueError, match="attempt"):
        POLICY.backoff(0)


NOW = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("7", 7.0),
        (" 0 ", 0.0),
        ("soon", None),
        ("-3", None),
        ("1.5", None),
        (format_datetime(datetime(2025, 1, 1, 12, 0, 30, tzinfo=UTC), usegmt=True), 30.0),
        (format_datetime(datetime(2024, 1, 1, tzinfo=UTC), usegmt=True), 0.0),
    ],
)
def test_parse_retry_after(header: str | None, expected: float | None) -> None:
    assert parse_retry_after(header, now=NOW) == expected
