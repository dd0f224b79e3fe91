"""Durations as people type them, and the two-day floor of raw-event retention."""

from __future__ import annotations

import pytest

from tracks.presence.retention import (
    MAX_DURATION_MS,
    MIN_RETENTION_MS,
    check_retention,
    parse_duration,
)

DAY = 86_400_000


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("90s", 90_000),
        ("30m", 1_800_000),
        ("24h", DAY),
        ("7d", 7 * DAY),
        ("2w", 14 * DAY),
        (" 7 d ", 7 * DAY),
        ("1.5h", 5_400_000),
        (".5s", 500),
        ("0s", 0),
        ("0.0004s", 0),  # rounded to whole ms
    ],
)
def test_parse_duration(text: str, ms: int) -> None:
    assert parse_duration(text) == ms


@pytest.mark.parametrize(
    "text",
    ["7", "d", "-1d", "+1d", "7y", "7D", "", "1e3s", "nan", "inf", "nans", "infd", "1d2h", "٣d"],
)
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="bad duration"):
        parse_duration(text)


def test_a_bare_number_takes_the_given_unit() -> None:
    assert parse_duration("3600", unit="s") == 3_600_000
    assert parse_duration("1.5", unit="h") == 5_400_000
    assert parse_duration("15m", unit="s") == 900_000  # a written unit wins
    for text in ("nan", "inf", "-5", ""):
        with pytest.raises(ValueError, match="or a number of s"):
            parse_duration(text, unit="s")
    with pytest.raises(ValueError, match="unknown duration unit"):
        parse_duration("5", unit="y")


def test_parse_duration_bounds_the_length() -> None:
    limit_seconds = MAX_DURATION_MS // 1000
    assert parse_duration(f"{limit_seconds}s") == limit_seconds * 1000
    with pytest.raises(ValueError, match="longer than"):
        parse_duration(f"{limit_seconds + 1}s")
    with pytest.raises(ValueError, match="longer than"):
        parse_duration("9" * 400 + "w")


def test_retention_of_at_least_two_days() -> None:
    assert MIN_RETENTION_MS == 2 * DAY
    assert check_retention(2 * DAY) == 2 * DAY
    assert check_retention(90.0 * DAY) == 90 * DAY
    for short in (2 * DAY - 1, DAY, 0, -DAY):
        with pytest.raises(ValueError, match="--older-than must be at least 2d"):
            check_retention(short, name="--older-than")
    for bad in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises(ValueError, match="retention_days must be a finite duration"):
            check_retention(bad, name="retention_days")
