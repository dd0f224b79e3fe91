"""Archives: day files, verification, idempotent re-runs, reading back through read_events."""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest

from tests.postgresql_fixtures import create_database, drop_database, write_postgresql
from tracks import Event, JSONValue, cli, read_events
from tracks.presence import sqlite_schema as schema
from tracks.presence.archive import (
    ArchiveError,
    ArchiveResult,
    day_path,
    read_archive,
    write_day,
)
from tracks.presence.archive import archive_store as archive_sqlite
from tracks.presence.postgresql_archive import archive_postgresql

DAY = 86_400_000
# 2024-03-01T00:00:00Z
T0 = 1_709_251_200_000


def make_store(path: Path | str, events: list[Event]) -> None:
    if isinstance(path, str):
        write_postgresql(path, events)
        return
    connection = schema.connect(path)
    schema.insert_events(connection, events)
    connection.close()


def archive_store(
    source: Path | str, directory: Path, *, before_ms: int, upto_id: int | None = None
) -> ArchiveResult:
    """The store's archiver: SQLite's, or PostgreSQL's for a URL."""
    if isinstance(source, str):
        return archive_postgresql(source, directory, before_ms=before_ms, upto_id=upto_id)
    return archive_sqlite(source, directory, before_ms=before_ms, upto_id=upto_id)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path | str]:
    """The event store under test: a SQLite file, or a fresh PostgreSQL database's URL."""
    if request.param == "sqlite":
        yield tmp_path / "events.sqlite"
        return
    url = create_database()
    try:
        yield url
    finally:
        drop_database(url)


def history() -> list[Event]:
    """Three days of sessions, with every kind of prop the store promotes or keeps."""
    events = []
    for n in range(60):
        ts = T0 + (n % 3) * DAY + n * 1000
        ids = {"blog_id": 1, "post_id": n % 4 + 1, "session_id": 1000 + n, "wp_user_id": n % 5 + 1}
        events.append(Event("jetpack_rtc_join", {**ids, "contributors": [1, 2]}, ts=ts))
        events.append(Event("jetpack_rtc_leave", {**ids, "clean": n % 2 == 0}, ts=ts + 500))
    events.append(
        Event("jetpack_rtc_connection_error", {"blog_id": 1, "error_code": "x"}, ts=T0 + 5)
    )
    events.append(Event("jetpack_rtc_join", {"session_id": "str-id"}, ts=T0 + 3 * DAY + 1))
    return events


def as_json(events: list[Event]) -> list[dict[str, JSONValue]]:
    return sorted((event.to_json() for event in events), key=lambda item: str(item["event_id"]))


def test_archive_moves_old_days_and_keeps_the_rest(tmp_path: Path, store: Path | str) -> None:
    archive = tmp_path / "archive"
    events = history()
    make_store(store, events)
    cutoff = T0 + 2 * DAY  # days 0 and 1 go; days 2 and 3 stay
    result = archive_store(store, archive, before_ms=cutoff)

    old = [event for event in events if event.ts < cutoff]
    assert result.days == (date(2024, 3, 1), date(2024, 3, 2))
    assert result.archived == result.deleted == len(old)
    assert sorted(p.relative_to(archive).as_posix() for p in archive.rglob("*")) == [
        "2024",
        "2024/03",
        "2024/03/2024-03-01.jsonl.gz",
        "2024/03/2024-03-02.jsonl.gz",
    ]
    assert as_json(list(read_archive(archive))) == as_json(old)
    assert as_json(list(read_events(store))) == as_json([e for e in events if e.ts >= cutoff])
    # Together they are the whole history again, in ts order.
    both = list(read_events(store, archive=archive))
    assert as_json(both) == as_json(events)
    assert [event.ts for event in both] == sorted(event.ts for event in events)


def test_each_line_is_exactly_the_jsonl_event_format(tmp_path: Path, store: Path | str) -> None:
    archive = tmp_path / "archive"
    events = history()
    make_store(store, events)
    archive_store(store, archive, before_ms=T0 + DAY)
    with gzip.open(day_path(archive, date(2024, 3, 1)), "rt", encoding="utf-8") as file:
        lines = file.read().splitlines()
    first_day = sorted((e for e in events if e.ts < T0 + DAY), key=lambda e: e.ts)
    assert len(lines) == len(first_day)
    for line, event in zip(lines, first_day, strict=True):
        assert list(json.loads(line)) == ["event_id", "name", "ts", "props"]
        assert line == json.dumps(event.to_json(), separators=(",", ":"), ensure_ascii=False)


def test_rerun_is_idempotent_and_merges_a_day_without_duplicates(
    tmp_path: Path, store: Path | str
) -> None:
    archive = tmp_path / "archive"
    events = history()
    make_store(store, events[:40])
    archive_store(store, archive, before_ms=T0 + 3 * DAY)
    path = day_path(archive, date(2024, 3, 1))
    before = path.read_bytes()
    # Nothing new: nothing changes.
    again = archive_store(store, archive, before_ms=T0 + 3 * DAY)
    assert (again.archived, again.deleted, again.days) == (0, 0, ())
    assert path.read_bytes() == before
    # A crash after the rename but before the delete: the rows are back in the store,
    # with more events of the same days; the re-run adds only the new ones.
    make_store(store, events)
    result = archive_store(store, archive, before_ms=T0 + 3 * DAY)
    old = [event for event in events if event.ts < T0 + 3 * DAY]
    assert result.archived == len(old) - len([e for e in events[:40] if e.ts < T0 + 3 * DAY])
    assert result.deleted == len(old)
    archived = list(read_archive(archive))
    assert len(archived) == len({event.event_id for event in archived}) == len(old)
    assert as_json(archived) == as_json(old)


def test_read_events_counts_an_event_in_both_once(tmp_path: Path, store: Path | str) -> None:
    archive = tmp_path / "archive"
    events = history()
    make_store(store, events)
    write_day(archive, date(2024, 3, 1), [e for e in events if e.ts < T0 + DAY])
    assert as_json(list(read_events(store, archive=archive))) == as_json(events)


def test_jsonl_store_with_archive(tmp_path: Path) -> None:
    events = history()
    store = tmp_path / "events.jsonl"
    late = [event for event in events if event.ts >= T0 + DAY]
    store.write_text("".join(json.dumps(event.to_json()) + "\n" for event in late))
    archive = tmp_path / "archive"
    write_day(archive, date(2024, 3, 1), [e for e in events if e.ts < T0 + DAY])
    assert as_json(list(read_events(store, archive=archive))) == as_json(events)


def test_read_archive_time_window(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    events = [e for e in history() if e.ts < T0 + 3 * DAY]
    for day in range(3):
        start = T0 + day * DAY
        write_day(
            archive, date(2024, 3, 1 + day), [e for e in events if start <= e.ts < start + DAY]
        )
    window = list(read_archive(archive, since_ms=T0 + DAY + 10_000, until_ms=T0 + 2 * DAY + 20_000))
    assert window
    assert as_json(window) == as_json(
        [e for e in events if T0 + DAY + 10_000 <= e.ts < T0 + 2 * DAY + 20_000]
    )
    assert list(read_archive(tmp_path / "missing")) == []


def test_write_day_refuses_another_days_event(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is not on 2024-03-02"):
        write_day(tmp_path, date(2024, 3, 2), [Event("jetpack_rtc_join", {}, ts=T0)])
    # Nothing half-written is left behind.
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == []


def test_a_corrupt_day_file_is_an_error_not_a_silent_skip(tmp_path: Path) -> None:
    path = day_path(tmp_path, date(2024, 3, 1))
    path.parent.mkdir(parents=True)
    path.write_bytes(gzip.compress(b'{"event_id": "nope"}\n'))
    with pytest.raises(ArchiveError, match=r"2024-03-01\.jsonl\.gz:1: not an event"):
        list(read_archive(tmp_path))
    # And a merge into it refuses too, leaving the store alone.
    store = tmp_path / "events.sqlite"
    make_store(store, [Event("jetpack_rtc_join", {}, ts=T0 + 1)])
    with pytest.raises(ArchiveError):
        archive_store(store, tmp_path, before_ms=T0 + DAY)
    assert len(list(read_events(store))) == 1


def test_rows_stored_during_a_run_with_an_old_ts_stay(tmp_path: Path) -> None:
    store = tmp_path / "events.sqlite"
    make_store(store, [Event("jetpack_rtc_join", {}, ts=T0 + 1)])
    connection = schema.connect(store)
    # Simulate a row arriving after the run took its snapshot: delete only up to an id.
    schema.insert_events(connection, [Event("jetpack_rtc_join", {}, ts=T0 + 2)])
    deleted = schema.delete_events(connection, until_ms=T0 + DAY, upto_id=1)
    assert deleted == 1
    assert [row[0] for row in connection.execute("SELECT ts FROM events")] == [T0 + 2]
    connection.close()


def test_empty_and_missing_stores(tmp_path: Path) -> None:
    store = tmp_path / "events.sqlite"
    make_store(store, [])
    assert archive_store(store, tmp_path / "a", before_ms=T0).days == ()
    with pytest.raises(FileNotFoundError):
        archive_store(tmp_path / "nope.sqlite", tmp_path / "a", before_ms=T0)


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert cli.main(list(argv)) == 0
    return capsys.readouterr().out


def test_cli_archive_round_trip_reproduces_the_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], store: Path | str
) -> None:
    archive = tmp_path / "archive"
    now = time.time_ns() // 1_000_000
    room = {"blog_id": 1, "post_id": 9}
    recent = [
        Event("jetpack_rtc_join", {**room, "session_id": 5, "wp_user_id": 2}, ts=now - DAY),
        Event("jetpack_rtc_blocked", {**room, "session_id": 6}, ts=now - DAY + 1),
    ]
    blocked = Event("jetpack_rtc_blocked", {"blog_id": 1, "post_id": 1, "session_id": 9}, ts=T0 + 7)
    make_store(store, [*history(), blocked, *recent])
    before = json.loads(run_cli(capsys, "report", str(store), "--json"))

    out = run_cli(capsys, "archive", str(store), "--older-than", "90d", "--to", str(archive))
    assert out.startswith(f"archived {len(history()) + 1} events of 4 days to {archive};")
    assert [event.event_id for event in read_events(store)] == [e.event_id for e in recent]
    # The store alone (its rollups keep the archived days), and raw store + archive, agree.
    assert json.loads(run_cli(capsys, "report", str(store), "--json")) == before
    with_archive = run_cli(capsys, "report", str(store), "--archive", str(archive), "--json")
    assert json.loads(with_archive) == before
    assert before["blocked"] == 2
    assert before["joins"] == 61

    # Again: nothing left to move, the archive unchanged.
    out = run_cli(capsys, "archive", str(store), "--older-than", "90d", "--to", str(archive))
    assert out.startswith("archived 0 events of 0 days")
    assert (
        json.loads(run_cli(capsys, "report", str(store), "--archive", str(archive), "--json"))
        == before
    )


def test_cli_archive_refuses_a_short_cutoff_and_jsonl(tmp_path: Path) -> None:
    store = tmp_path / "events.sqlite"
    make_store(store, history())
    assert cli.main(["archive", str(store), "--older-than", "1d", "--to", str(tmp_path)]) == 2
    jsonl = tmp_path / "events.jsonl"
    jsonl.write_text("")
    assert cli.main(["archive", str(jsonl), "--older-than", "90d", "--to", str(tmp_path)]) == 2
