"""Every ```sql block of README.md runs against a PostgreSQL event store seeded with a few
events, and the analyst queries give the hand-computed answers."""

from __future__ import annotations

import re
from pathlib import Path

import anyio
import pytest

from tests.postgresql_fixtures import postgres_url
from tests.tracks.tracks_testing import TIMEOUT
from tracks import Event, PostgresRecorder

psycopg = pytest.importorskip("psycopg")

__all__ = ["postgres_url"]  # the fixture, imported to be found

README = Path(__file__).resolve().parents[2] / "README.md"
DAY = 86_400_000
T0 = 1_700_006_400_000  # 2023-11-15 00:00 UTC


def sql_blocks() -> list[str]:
    return re.findall(r"```sql\n(.*?)```", README.read_text(), flags=re.DOTALL)


def seed() -> list[Event]:
    def event(name: str, blog: int, post: int, session: int, ts: int) -> Event:
        return Event(name, {"blog_id": blog, "post_id": post, "session_id": session}, ts=ts)

    return [
        event("jetpack_rtc_join", 1, 10, 100, T0 + 1_000),
        event("jetpack_rtc_join", 1, 10, 100, T0 + 2_000),  # the same session again
        event("jetpack_rtc_join", 1, 10, 101, T0 + 3_000),
        event("jetpack_rtc_leave", 1, 10, 101, T0 + 4_000),
        event("jetpack_rtc_join", 1, 10, 102, T0 + DAY + 1_000),
        event("jetpack_rtc_blocked", 1, 10, 103, T0 + DAY + 2_000),
        event("jetpack_rtc_join", 2, 20, 200, T0 + 5_000),
        event("jetpack_rtc_blocked", 2, 20, 201, T0 + 6_000),
        event("jetpack_rtc_blocked", 2, 20, 202, T0 + 7_000),
        event("jetpack_rtc_blocked", 2, 20, 203, T0 + 8_000),
    ]


def test_the_readme_has_the_analyst_queries() -> None:
    blocks = sql_blocks()
    assert len(blocks) >= 2
    assert any("Unique sessions per post per day" in block for block in blocks)
    assert any("Blocked rate per blog" in block for block in blocks)


async def test_every_readme_query_runs_and_answers_right(postgres_url: str) -> None:
    recorder = PostgresRecorder(postgres_url, flush_interval=0)
    async with recorder:
        for event in seed():
            recorder.record(event)
        with anyio.fail_after(TIMEOUT):
            await recorder.flush()
    assert recorder.stats.written == 10
    results = {}
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute("SET TIME ZONE 'Pacific/Auckland'")  # the day is UTC's anyway
        for block in sql_blocks():
            results[block.splitlines()[0]] = connection.execute(block).fetchall()
    sessions = next(rows for title, rows in results.items() if "Unique sessions" in title)
    assert [(b, p, str(day), n) for b, p, day, n in sessions] == [
        (1, 10, "2023-11-15", 2),
        (2, 20, "2023-11-15", 1),
        (1, 10, "2023-11-16", 1),
    ]
    blocked = next(rows for title, rows in results.items() if "Blocked rate" in title)
    assert [(b, blocked_n, joins, str(rate)) for b, blocked_n, joins, rate in blocked] == [
        (1, 1, 4, "0.200"),
        (2, 3, 1, "0.750"),
    ]
