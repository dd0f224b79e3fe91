"""The document stores: the same behaviour on SQLite and PostgreSQL, and what only a shared
PostgreSQL store must do (two nodes, concurrent compaction, an outage, kill -9)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pycrdt import Doc, Text

import rtc.documents.postgresql as postgresql_documents
from rtc.documents import Documents, open_documents, retry_delay
from rtc.documents.batching import merged_by_room
from rtc.documents.postgresql import (
    PostgresDocuments,
    compaction_lock_key,
    lock_key,
    redact,
    split_schema,
)
from rtc.ids import RoomKey
from tests.postgresql_fixtures import ThrowawayPostgres, create_database, drop_database

from .clients import TIMEOUT, YClient, serve_rtc
from .processes import rtc_process

ROOM = RoomKey(7, 42)
OTHER = RoomKey(7, 43)


def typed(text: str, *, client_id: int = 1) -> tuple[Doc[Any], list[bytes]]:
    """A document and the updates of typing `text` into it, one character each."""
    doc: Doc[Any] = Doc(client_id=client_id)
    content = doc.get("content", type=Text)
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    for character in text:
        content += character
    return doc, updates


def text_of(updates: list[bytes]) -> str:
    doc: Doc[Any] = Doc()
    for update in updates:
        doc.apply_update(update)
    return str(doc.get("content", type=Text))


@pytest.fixture
def database_url() -> Iterator[str]:
    """A fresh PostgreSQL database on the shared server, dropped after the test."""
    url = create_database()
    try:
        yield url
    finally:
        drop_database(url)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each store in turn: a fresh SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite://{tmp_path / 'documents.sqlite'}"
        return
    url = create_database()
    try:
        yield url
    finally:
        drop_database(url)


def opened(url: str, **options: Any) -> Documents:
    return open_documents(url, flush_interval=options.pop("flush_interval", 0.01), **options)


# --- the behaviour both stores share -----------------------------------------------------


async def test_updates_are_loaded_back_in_order_queued_or_written(store_url: str) -> None:
    _, updates = typed("hello")
    async with opened(store_url) as store:
        for update in updates[:3]:
            store.append(ROOM, update)
        await store.flush()
        for update in updates[3:]:
            store.append(ROOM, update)
        rows = await store.load(ROOM)
        # The batch written went in as one row (merged); the queued ones follow, each once:
        # as they came, or merged too when the store's own flush took them meanwhile.
        assert 2 <= len(rows) <= 1 + len(updates[3:])
        assert text_of(rows[:1]) == "hel"
        assert text_of(rows) == "hello"
        assert await store.load(OTHER) == []
    async with opened(store_url) as store:  # closing wrote the queue
        assert text_of(await store.load(ROOM)) == "hello"
        assert store.stats.pending == 0


def test_a_batch_is_written_as_one_merged_row_per_room() -> None:
    _doc, updates = typed("abc")
    _, other = typed("xy", client_id=2)
    batch = [(1, 1, updates[0]), (1, 2, other[0]), (1, 1, updates[1]), (1, 1, updates[2]),
             (1, 2, other[1])]
    rows = merged_by_room(batch)
    assert [row[:2] for row in rows] == [(1, 1), (1, 2)]  # rooms in order of appearance
    assert text_of([rows[0][2]]) == "abc"
    assert text_of([rows[1][2]]) == "xy"
    assert merged_by_room(batch[:2]) == batch[:2]  # one update a room: as it came


async def test_compaction_leaves_one_update_with_the_whole_state(store_url: str) -> None:
    doc, updates = typed("compact me")
    async with opened(store_url) as store:
        for update in updates:
            store.append(ROOM, update)
        assert store.wants_compaction(ROOM) is False
        await store.compact(ROOM, doc.get_update)
        _, later = typed("!", client_id=2)
        store.append(ROOM, later[0])
        await store.flush()
        rows = await store.load(ROOM)
        assert len(rows) == 2
        assert text_of(rows) in ("compact me!", "!compact me")
        assert store.stats.compactions == 1


async def test_a_room_past_compact_after_wants_compaction(store_url: str, tmp_path: Path) -> None:
    _, updates = typed("abc")
    if store_url.startswith("sqlite"):
        from rtc.documents import SqliteDocuments

        store: Documents = SqliteDocuments(tmp_path / "c.sqlite", compact_after=2)
    else:
        store = PostgresDocuments(store_url, compact_after=2)
    async with store:
        for update in updates:
            store.append(ROOM, update)
        assert store.wants_compaction(ROOM)
        assert not store.wants_compaction(OTHER)


async def test_a_server_keeps_documents_across_restarts(store_url: str, tmp_path: Path) -> None:
    async with serve_rtc(tmp_path, documents=store_url) as rtc:
        async with YClient.connect(rtc.room_url(), 111, 1) as ada:
            await ada.insert(0, "persisted")
            await rtc.server.flush()
    async with serve_rtc(tmp_path, documents=store_url) as rtc:
        async with YClient.connect(rtc.room_url(), 222, 2) as bob:
            await bob.wait_text("persisted")


def test_unknown_urls_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown documents URL"):
        open_documents("redis://localhost/0")
    with pytest.raises(ValueError, match="no file"):
        open_documents("sqlite://")


# --- pure pieces -------------------------------------------------------------------------


def test_retry_delay_backs_off_to_a_second() -> None:
    assert [retry_delay(n) for n in range(6)] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0]
    assert retry_delay(50) == 1.0


def test_urls_lose_their_schema_option_and_their_password_in_logs() -> None:
    assert split_schema("postgresql://u@h:5/db?schema=rtc&sslmode=disable") == (
        "postgresql://u@h:5/db?sslmode=disable", "rtc"
    )
    assert split_schema("postgres://u@h/db") == ("postgres://u@h/db", None)
    assert redact("postgresql://u:secret@h:5/db") == "postgresql://u:***@h:5/db"
    assert lock_key("a", 1) == lock_key("a", 1) != lock_key("a", 2)


# --- PostgreSQL shared by nodes ----------------------------------------------------------


async def test_two_nodes_each_write_their_own_and_both_load_everything(database_url: str) -> None:
    _, from_a = typed("aaa", client_id=1)
    _, from_b = typed("bbb", client_id=2)
    async with opened(database_url) as node_a, opened(database_url) as node_b:
        for update in from_a:
            node_a.append(ROOM, update)
        for update in from_b:
            node_b.append(ROOM, update)
        await node_a.flush()
        await node_b.flush()
        for node in (node_a, node_b):
            rows = await node.load(ROOM)
            assert len(rows) < len(from_a + from_b)  # each node's batch merged into a row
            assert sorted(text_of(rows)) == sorted("aaabbb")


async def test_a_schema_in_the_url_holds_the_tables(database_url: str) -> None:
    _, updates = typed("x")
    async with opened(f"{database_url}?schema=rtc_docs") as store:
        store.append(ROOM, updates[0])
    with psycopg.connect(database_url) as db:
        assert db.execute("SELECT count(*) FROM rtc_docs.documents").fetchone() == (1,)
        assert db.execute("SELECT version FROM rtc_docs.documents_schema").fetchone() == (1,)


async def test_nodes_starting_at_once_migrate_once(database_url: str) -> None:
    async def node() -> None:
        async with PostgresDocuments(database_url):
            pass

    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:
            for _ in range(6):
                tg.start_soon(node)
    with psycopg.connect(database_url) as db:
        assert db.execute("SELECT version FROM documents_schema").fetchall() == [(1,)]


async def test_compaction_waits_for_no_one_and_skips_a_room_another_node_compacts(
    database_url: str,
) -> None:
    doc, updates = typed("locked")
    async with opened(database_url) as store:
        for update in updates:
            store.append(ROOM, update)
        await store.flush()
        # Another node holds the room's compaction lock for the length of its transaction.
        with psycopg.connect(database_url) as other, other.transaction():
            other.execute("SELECT pg_advisory_xact_lock(%s)",
                          (compaction_lock_key(None, ROOM),))
            with anyio.fail_after(TIMEOUT):
                await store.compact(ROOM, doc.get_update)
            assert store.stats.compactions_skipped == 1
        await store.flush()  # the state went back to the queue: nothing was lost
        assert text_of(await store.load(ROOM)) == "locked"
        await store.compact(ROOM, doc.get_update)
        assert len(await store.load(ROOM)) == 1


async def test_concurrent_compaction_by_two_nodes_loses_no_update(database_url: str) -> None:
    doc_a, from_a = typed("node a;", client_id=1)
    doc_b, from_b = typed("node b;", client_id=2)
    async with opened(database_url) as node_a, opened(database_url) as node_b:
        for update in from_a:
            node_a.append(ROOM, update)
        for update in from_b:
            node_b.append(ROOM, update)
        await node_a.flush()
        await node_b.flush()
        # Each node knows only its own updates; both compact at once.
        async with anyio.create_task_group() as tg:
            tg.start_soon(node_a.compact, ROOM, doc_a.get_update)
            tg.start_soon(node_b.compact, ROOM, doc_b.get_update)
        await node_a.flush()
        await node_b.flush()
        done = node_a.stats.compactions + node_b.stats.compactions
        skipped = node_a.stats.compactions_skipped + node_b.stats.compactions_skipped
        assert (done, skipped) in ((2, 0), (1, 1))
        text = text_of(await node_a.load(ROOM))
        assert sorted(text) == sorted("node a;node b;")
        assert "node a;" in text
        assert "node b;" in text


async def test_a_row_committed_during_compaction_is_kept(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    doc, updates = typed("base")
    _, meanwhile = typed("+", client_id=9)
    merge = postgresql_documents.merged

    def merge_while_another_node_writes(rows: list[bytes]) -> bytes:
        # Runs between the compaction's read and its replace: another node commits a row.
        with psycopg.connect(database_url, autocommit=True) as other:
            other.execute("INSERT INTO documents (blog_id, post_id, update) VALUES (%s, %s, %s)",
                          (ROOM.blog_id, ROOM.post_id, meanwhile[0]))
        return merge(rows)

    monkeypatch.setattr(postgresql_documents, "merged", merge_while_another_node_writes)
    async with opened(database_url) as store:
        for update in updates:
            store.append(ROOM, update)
        await store.compact(ROOM, doc.get_update)
        rows = await store.load(ROOM)
    assert len(rows) == 2  # the compacted state and the row it had not read
    assert sorted(text_of(rows)) == sorted("base+")


# --- faults ------------------------------------------------------------------------------


@pytest.fixture
def throwaway() -> Iterator[ThrowawayPostgres]:
    server = ThrowawayPostgres()
    try:
        server.start()
        yield server
    finally:
        server.close()


async def until(condition: Callable[[], bool], *, within: float) -> None:
    with anyio.fail_after(within):
        while True:  # bounded by the timeout
            if condition():
                return
            # The write loop keeps no event for a test to await: its counters are the outcome.
            await anyio.sleep(0.02)  # noqa: sleep-ok


@pytest.mark.slow
async def test_a_restart_of_postgresql_loses_no_update(
    throwaway: ThrowawayPostgres, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="rtc.documents")
    _, updates = typed("before|during|after")
    async with opened(throwaway.url) as store:
        for update in updates[:7]:
            store.append(ROOM, update)
        await store.flush()
        await anyio.to_thread.run_sync(throwaway.stop)
        for update in updates[7:14]:
            store.append(ROOM, update)  # editing goes on in memory: never blocks
        await until(lambda: store.stats.write_failures >= 2, within=TIMEOUT)
        assert store.stats.pending == 7
        await anyio.to_thread.run_sync(throwaway.start)
        for update in updates[14:]:
            store.append(ROOM, update)
        await until(lambda: store.stats.pending == 0, within=TIMEOUT)
    async with opened(throwaway.url) as store:
        assert text_of(await store.load(ROOM)) == "before|during|after"
    failed = [r for r in caplog.records if "failed; will retry" in r.getMessage()]
    recovered = [r for r in caplog.records if "written to" in r.getMessage()]
    assert len(failed) == 1  # one line per outage, however many attempts
    assert len(recovered) == 1


@pytest.mark.slow
async def test_kill_9_keeps_every_update_older_than_a_second(
    tmp_path: Path, database_url: str
) -> None:
    args = ("--log-level", "WARNING", "--documents", database_url)
    async with rtc_process(tmp_path, *args) as server:
        async with (
            YClient.connect(server.room_url(), 111, user=1) as ada,
            YClient.connect(server.room_url(), 222, user=2) as bob,
        ):
            old = ""
            for index in range(50):
                await ada.insert(len(str(ada.text)), f"old{index};")
            old = str(ada.text)
            await bob.wait_text(old)  # the server has applied (and queued) every one of them
            # The promise is about updates received more than a second before the kill.
            await anyio.sleep(1.1)  # noqa: sleep-ok
            for index in range(50):
                await ada.insert(len(str(ada.text)), f"new{index};")
            recent = str(ada.text)[len(old):]
            await server.kill()

    async with rtc_process(tmp_path / "again", *args) as server:
        async with YClient.connect(server.room_url(), 999, user=9) as fresh:
            await fresh.wait(fresh.synced.is_set)
            text = str(fresh.text)
    assert text.startswith(old)
    assert recent.startswith(text[len(old):])  # a prefix of the last second: nothing torn


async def document_metrics(http_url: str) -> dict[str, float]:
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        response = await client.get(f"{http_url}/metrics")
    response.raise_for_status()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
        if sample.name.startswith("rtc_document_")
    }


async def until_metrics(
    http_url: str, condition: Callable[[dict[str, float]], object]
) -> dict[str, float]:
    """The document figures from /metrics, once they meet `condition`."""
    with anyio.fail_after(TIMEOUT):
        while True:  # bounded by the timeout
            figures = await document_metrics(http_url)
            if condition(figures):
                return figures
            # What an operator watches: /metrics is the outcome under test.
            await anyio.sleep(0.05)  # noqa: sleep-ok


@pytest.mark.slow
async def test_editing_goes_on_while_postgresql_is_down(
    throwaway: ThrowawayPostgres, tmp_path: Path
) -> None:
    async with serve_rtc(tmp_path, documents=throwaway.url) as rtc:
        async with (
            YClient.connect(rtc.room_url(), 111, user=1) as ada,
            YClient.connect(rtc.room_url(), 222, user=2) as bob,
        ):
            await ada.insert(0, "before;")
            await bob.wait_text("before;")
            await rtc.server.flush()
            await anyio.to_thread.run_sync(throwaway.stop)
            for index in range(10):
                await ada.insert(len(str(ada.text)), f"down{index};")
            text = str(ada.text)
            await bob.wait_text(text)  # editing goes on in memory
            url = rtc.server.http_url
            figures = await until_metrics(url, lambda m: m["rtc_document_write_failures_total"])
            assert figures["rtc_document_updates_pending"] >= 1
            await anyio.to_thread.run_sync(throwaway.start)
            await until_metrics(url, lambda m: not m["rtc_document_updates_pending"])
    async with serve_rtc(tmp_path / "again", documents=throwaway.url) as rtc:
        async with YClient.connect(rtc.room_url(), 333, user=3) as carol:
            await carol.wait_text(text)


def test_the_package_exports_what_we_mean() -> None:
    import rtc.documents

    assert set(rtc.documents.__all__) == {
        "DocumentStats", "Documents", "SqliteDocuments",
        "StoreUnavailableError", "open_documents", "retry_delay",
    }
