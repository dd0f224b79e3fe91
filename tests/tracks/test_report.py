"""The `tracks` command over real SQLite and JSONL stores (figures: see test_stats.py)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest

from tests.tracks.tracks_testing import TIMEOUT
from tracks import Event, JsonlRecorder, Recorder, SqliteRecorder
from tracks.cli import format_event, main
from tracks.presence.sqlite_schema import connect

NOW = time.time_ns() // 1_000_000
DAY = 86_400_000


def fixture_events() -> list[Event]:
    def event(name: str, days_ago: float, **props: object) -> Event:
        return Event(f"jetpack_rtc_{name}", props, ts=int(NOW - days_ago * DAY))  # type: ignore[arg-type]

    return [
        # Post (1, 10): two sessions of user 5, one anonymous session.
        event("join", 1, blog_id=1, post_id=10, session_id="a", wp_user_id=5),
        event("join", 1, blog_id=1, post_id=10, session_id="b", wp_user_id=5),
        event("join", 1, blog_id=1, post_id=10, session_id="c"),
        event("leave", 1, blog_id=1, post_id=10, session_id="a", wp_user_id=5),
        # Post (1, 11): session "a" again, but in another room: a different session.
        event("join", 2, blog_id=1, post_id=11, session_id="a", wp_user_id=6),
        event("blocked", 2, blog_id=1, post_id=11, session_id="d", wp_user_id=7),
        # Blog 2, long ago.
        event("join", 30, blog_id=2, post_id=10, session_id="e", wp_user_id=8),
        event("connection_error", 30, blog_id=2, post_id=10, session_id="e", close_code=1011),
        event("connection_error", 1, blog_id=1, post_id=10, session_id="f", error_code="auth"),
        event(
            "connection_error",
            1,
            blog_id=1,
            post_id=10,
            session_id="g",
            error_code="auth",
            close_code=4403,
        ),
        event("connection_error", 1, blog_id=1, post_id=10, session_id="h"),
    ]


async def store(recorder: Recorder) -> None:
    async with recorder:
        for event in fixture_events():
            recorder.record(event)
        with anyio.fail_after(TIMEOUT):
            await recorder.flush()


@pytest.fixture(params=["sqlite", "jsonl"])
async def source(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    if request.param == "sqlite":
        path = tmp_path / "events.sqlite"
        await store(SqliteRecorder(path, flush_interval=0))
    else:
        path = tmp_path / "events.jsonl"
        await store(JsonlRecorder(path, flush_interval=0))
    return path


def test_cli_report_json(source: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(source), "--blog-id", "1", "--since", "7d", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["unique_sessions"] == 4  # a@10, b, c, a@11 joined (d was blocked)
    assert data["unique_users"] == 2
    assert data["unique_posts"] == 2
    assert data["connection_errors_by_code"] == {"auth": 2, "unknown": 1}


def test_cli_report_text(source: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(source)]) == 0
    out = capsys.readouterr().out
    assert "unique_sessions: 5" in out
    assert "auth=2" in out


def test_cli_tail_prints_one_line_per_event(
    source: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["tail", str(source), "--no-follow", "-n", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert all("jetpack_rtc_connection_error" in line for line in lines)
    assert main(["tail", str(source), "--no-follow", "--json", "-n", "100"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 11


def test_cli_errors_are_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path / "missing.sqlite")]) == 2
    assert "no event store" in capsys.readouterr().err
    assert main(["report", "x.sqlite", "--since", "soon"]) == 2
    assert "bad day" in capsys.readouterr().err


def test_format_event() -> None:
    event = Event("jetpack_rtc_join", {"blog_id": 1, "tag": "x"}, ts=1_700_000_000_123)
    assert format_event(event) == '2023-11-14T22:13:20.123Z jetpack_rtc_join blog_id=1 tag="x"'


def test_cli_report_days_start_at_the_first_day_with_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An empty store printed 20,000 empty days from 1970; `--since` is not bounded here
    (the operator's own machine), but the days still start where the data does."""
    path = tmp_path / "events.sqlite"
    connect(path).close()  # a store with no events
    assert main(["report", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["daily"] == []
    assert main(["report", str(path), "--format", "csv"]) == 0
    assert [line.split(",")[0] for line in capsys.readouterr().out.splitlines()] == [
        "day", "total"
    ]


async def test_cli_report_since_1970_starts_at_the_first_event(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "events.sqlite"
    await store(SqliteRecorder(path, flush_interval=0))
    assert main(["report", str(path), "--since", "1970-01-01", "--json"]) == 0
    days = [day["day"] for day in json.loads(capsys.readouterr().out)["daily"]]
    first = datetime.fromtimestamp((NOW - 30 * DAY) / 1000, UTC).date().isoformat()
    today = datetime.fromtimestamp(NOW / 1000, UTC).date().isoformat()
    assert (days[0], days[-1], len(days)) == (first, today, 31)
