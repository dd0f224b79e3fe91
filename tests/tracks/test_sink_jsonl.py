"""JsonlRecorder: one exact JSON object per line, appended batch by batch; and reading it back."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

from tests.tracks.tracks_testing import TIMEOUT, make_events
from tracks import Event, JsonlRecorder, open_recorder, read_events
from tracks.deadletter import DeadLetters


async def test_lines_are_exactly_the_event_json(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "events.jsonl"
    events = make_events(5)
    recorder = JsonlRecorder(path, flush_interval=0)
    async with recorder:
        for event in events:
            recorder.record(event)
        with anyio.fail_after(TIMEOUT):
            await recorder.flush()
        # Flushed per batch: a reader (tail -f) sees whole lines before close.
        lines = path.read_text().splitlines()
    assert [json.loads(line) for line in lines] == [event.to_json() for event in events]
    assert all(list(json.loads(line)) == ["event_id", "name", "ts", "props"] for line in lines)
    assert recorder.description == f"jsonl://{path}"


async def test_runs_append(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    for start in (0, 3):
        async with JsonlRecorder(path) as recorder:
            for event in make_events(3, start=start):
                recorder.record(event)
    assert [event.props["n"] for event in read_events(path)] == [0, 1, 2, 3, 4, 5]


async def test_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    events = make_events(2)
    async with open_recorder("jsonl:-") as recorder:
        assert recorder.description == "jsonl:-"
        for event in events:
            recorder.record(event)
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line) for line in lines] == [event.to_json() for event in events]


def test_read_events_sorts_by_ts_and_skips_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    events = make_events(3)
    lines = [json.dumps(event.to_json()) for event in reversed(events)]
    path.write_text("\n".join(lines) + '\n{"event_id": "half-writ')
    assert list(read_events(path)) == events
    assert list(read_events(f"jsonl://{path}")) == events


def test_read_events_skips_garbage_lines(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "events.jsonl"
    event = make_events(1)[0]
    path.write_text("not json\n" + json.dumps(event.to_json()) + "\n")
    assert list(read_events(path)) == [event]
    assert "unreadable" in caplog.text


def test_read_events_needs_a_store(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        list(read_events(tmp_path / "missing.jsonl"))
    with pytest.raises(ValueError, match="stdout"):
        list(read_events("jsonl:-"))


async def test_an_event_utf8_cannot_encode_is_set_aside_and_the_rest_appended(
    tmp_path: Path,
) -> None:
    path, spool = tmp_path / "events.jsonl", tmp_path / "spool"
    events = make_events(4)
    bad = Event("jetpack_rtc_join", {"session_id": "lone \ud800 surrogate"})
    async with JsonlRecorder(path, flush_interval=3600, spool=spool) as recorder:
        for event in [*events[:2], bad, *events[2:]]:
            recorder.record(event)
        with anyio.fail_after(TIMEOUT):
            await recorder.flush()
        stats = recorder.stats
    assert list(read_events(path)) == events
    assert (stats.written, stats.dead_lettered, stats.spooled) == (4, 1, 0)
    assert DeadLetters(spool / "dead-letter.jsonl").read() == [bad]
