"""Faults around a real `python -m rtc serve` process: kill -9, SIGTERM, a locked SQLite file,
a full disk, and an HTTP analytics backend that fails (500s, hangs, refused connections)."""

from __future__ import annotations

import errno
import os
import sqlite3
import subprocess
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pycrdt import Doc, Text

from tests.tracks.tracks_testing import Backend, Reply
from tracks import read_events

from .clients import TIMEOUT, YClient
from .processes import ServerProcess, rtc_process

pytestmark = pytest.mark.slow

# SQLite's busy timeout in the store is 5 s; the write loop then waits 1 s before retrying.
STORE_RETRY = 7.0 * float(os.environ.get("RTC_TEST_TIMEOUT_FACTOR", "1"))


async def append(client: YClient, pieces: list[str]) -> str:
    for piece in pieces:
        await client.insert(len(str(client.text)), piece)
    return str(client.text)


async def stored_text(data_dir: Path) -> str:
    """The document as a fresh client sees it after a restart on the same data dir."""
    async with rtc_process(data_dir, "--log-level", "WARNING") as server:
        async with YClient.connect(server.room_url(), 999, user=9) as fresh:
            await fresh.wait(fresh.synced.is_set)
            return str(fresh.text)


def text_on_disk(path: Path, blog_id: int = 7, post_id: int = 42) -> str:
    """The document rebuilt from the rows of documents.sqlite, read by this process."""
    with sqlite3.connect(path, timeout=0) as db:
        rows = db.execute(
            "SELECT data FROM updates WHERE blog_id = ? AND post_id = ? ORDER BY seq",
            (blog_id, post_id),
        ).fetchall()
    doc: Doc[Text] = Doc()
    for (data,) in rows:
        doc.apply_update(bytes(data))
    return str(doc.get("content", type=Text))


async def until_on_disk(path: Path, expected: str) -> None:
    """Wait until another process's writes show `expected` in the file."""
    with anyio.fail_after(STORE_RETRY + TIMEOUT):
        while True:  # bounded by the timeout
            try:
                if text_on_disk(path) == expected:
                    return
            except sqlite3.OperationalError:
                pass
            # No event crosses the process boundary: polling the file is the only way to see.
            await anyio.sleep(0.05)  # noqa: sleep-ok


async def healthz(server: ServerProcess) -> dict[str, object]:
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        response = await client.get(f"{server.http_url}/healthz")
    response.raise_for_status()
    return dict(response.json())


async def spooled(server: ServerProcess) -> float:
    """Events the server's recorders have put in their spool so far (from /metrics)."""
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        response = await client.get(f"{server.http_url}/metrics")
    response.raise_for_status()
    return sum(
        sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
        if sample.name == "rtc_recorder_spooled_total"
    )


async def until_spooled(server: ServerProcess, count: int, *, within: float) -> None:
    with anyio.fail_after(within):
        while True:  # bounded by the timeout
            if await spooled(server) >= count:
                return
            # The counter lives in another process: polling /metrics is the only way to see.
            await anyio.sleep(0.1)  # noqa: sleep-ok


# --- (a) kill -9 -------------------------------------------------------------------------


async def test_kill_9_keeps_every_update_older_than_a_second(tmp_path: Path) -> None:
    async with rtc_process(tmp_path, "--log-level", "WARNING") as server:
        async with (
            YClient.connect(server.room_url(), 111, user=1) as ada,
            YClient.connect(server.room_url(), 222, user=2) as bob,
        ):
            old = await append(ada, [f"old{i};" for i in range(50)])
            await bob.wait_text(old)  # the server has applied (and queued) every one of them
            # The promise is about updates received more than a second before the kill: the
            # time that passes is the very thing under test, not a wait for something.
            await anyio.sleep(1.1)  # noqa: sleep-ok
            recent = (await append(ada, [f"new{i};" for i in range(50)]))[len(old):]
            await server.kill()

    text = await stored_text(tmp_path)
    assert text.startswith(old)
    # What survived of the last second is a prefix of it: nothing torn, nothing reordered.
    assert recent.startswith(text[len(old):])


# --- (b) SIGTERM -------------------------------------------------------------------------


async def test_sigterm_flushes_documents_and_events(tmp_path: Path) -> None:
    # A 30 s flush interval: only the shutdown itself can have written the document.
    env = {"RTC_STORE_FLUSH_INTERVAL": "30"}
    async with rtc_process(tmp_path, "--log-level", "WARNING", env=env) as server:
        async with (
            YClient.connect(server.room_url(), 111, user=1) as ada,
            YClient.connect(server.room_url(), 222, user=2) as bob,
        ):
            # Edits made before ada answers the server's sync step 1 would reach it a second
            # time, inside that answer (a 101st update): write only once the handshake is over.
            await ada.wait(ada.answered.is_set)
            text = await append(ada, [f"piece{i};" for i in range(100)])
            await bob.wait_text(text)
            assert await server.terminate() == 0

    events = list(read_events(tmp_path / "events.sqlite"))
    assert Counter((e.name, e.props["session_id"]) for e in events) == {
        ("jetpack_rtc_join", 111): 1,
        ("jetpack_rtc_join", 222): 1,
        ("jetpack_rtc_leave", 111): 1,
        ("jetpack_rtc_leave", 222): 1,
    }
    leaves = {e.props["session_id"]: e.props for e in events if e.name == "jetpack_rtc_leave"}
    assert leaves[111]["updates"] == 100
    assert leaves[111]["clean"] is True
    assert await stored_text(tmp_path) == text


# --- (c) a locked SQLite file ------------------------------------------------------------


@contextmanager
def exclusive_lock(path: Path) -> Iterator[sqlite3.Connection]:
    """Hold `BEGIN EXCLUSIVE` on the file from this process (in WAL mode: no other writer)."""
    db = sqlite3.connect(path, timeout=TIMEOUT, isolation_level=None)
    try:
        db.execute("BEGIN EXCLUSIVE")
        yield db
        db.execute("ROLLBACK")
    finally:
        db.close()


async def test_a_locked_documents_file_is_retried_not_crashed_on(tmp_path: Path) -> None:
    path = tmp_path / "documents.sqlite"
    async with rtc_process(tmp_path, "--log-level", "WARNING") as server:
        async with (
            YClient.connect(server.room_url(), 111, user=1) as ada,
            YClient.connect(server.room_url(), 222, user=2) as bob,
        ):
            before = await append(ada, ["before;"])
            await bob.wait_text(before)
            await until_on_disk(path, before)
            with exclusive_lock(path):
                during = await append(ada, [f"during{i};" for i in range(20)])
                await bob.wait_text(during)  # editing goes on while the file is locked
                await server.wait_log("writing document updates to .* failed; will retry")
                more = await append(bob, ["still;"])
                await ada.wait_text(more)
                assert (await healthz(server))["status"] == "ok"
            await until_on_disk(path, more)  # the lock is gone: the queued updates land
        assert await server.terminate() == 0
    assert await stored_text(tmp_path) == more


async def test_a_room_left_while_the_file_is_locked_is_stored_once_it_is_free(
    tmp_path: Path,
) -> None:
    """Unloading an empty room compacts it: that write meets the lock too."""
    path = tmp_path / "documents.sqlite"
    async with rtc_process(tmp_path, "--log-level", "WARNING", "--room-grace", "0.1") as server:
        async with YClient.connect(server.room_url(), 111, user=1) as ada:
            text = await append(ada, ["kept;"])
        await until_on_disk(path, text)
        with exclusive_lock(path):
            async with YClient.connect(server.room_url(), 111, user=1) as ada:
                await ada.wait_text(text)
                text = await append(ada, ["while-locked;"])
            # The room is now empty; its unload waits for the lock. Meanwhile another post
            # is opened and edited.
            async with YClient.connect(server.room_url(7, 43), 333, user=3) as carol:
                await carol.wait(carol.synced.is_set)
                await append(carol, ["other post;"])
            assert (await healthz(server))["status"] == "ok"
        await until_on_disk(path, text)
        assert (await healthz(server))["status"] == "ok"
        assert await server.terminate() == 0
    assert await stored_text(tmp_path) == text


# --- (d) a full disk ---------------------------------------------------------------------


@contextmanager
def small_disk(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted at `where` (root only); skips the test when not permitted."""
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True, text=True, check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip() or mounted.returncode}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False, capture_output=True)


def fill(directory: Path) -> Path:
    """Write a file until the disk is full; returns it (delete it to free the space)."""
    filler = directory / "filler"
    with filler.open("wb") as out:
        try:
            while True:  # bounded by the disk's size
                out.write(b"\0" * 65536)
                out.flush()
        except OSError as error:
            if error.errno != errno.ENOSPC:
                raise
    return filler


async def test_a_full_disk_is_reported_and_writing_resumes_when_space_returns(
    tmp_path: Path,
) -> None:
    with small_disk(tmp_path / "disk", "4m") as disk:
        async with rtc_process(disk, "--log-level", "WARNING") as server:
            async with (
                YClient.connect(server.room_url(), 111, user=1) as ada,
                YClient.connect(server.room_url(), 222, user=2) as bob,
            ):
                text = await append(ada, ["before;"])
                await bob.wait_text(text)
                await until_on_disk(disk / "documents.sqlite", text)
                filler = fill(disk)
                text = await append(ada, [f"{i:04d}" + "x" * 2000 + ";" for i in range(40)])
                await bob.wait_text(text)  # editing goes on
                line = await server.wait_log("database or disk is full|No space left")
                assert line
                await server.wait_log("writing document updates to .* failed; will retry")
                assert (await healthz(server))["status"] == "ok"
                filler.unlink()
                await until_on_disk(disk / "documents.sqlite", text)
            assert await server.terminate() == 0
        assert await stored_text(disk) == text


# --- (e) the HTTP analytics backend fails ------------------------------------------------


def delivered(backend: Backend) -> Counter[tuple[str, int]]:
    """(event name, session id) of every event the backend accepted, with counts."""
    seen: Counter[tuple[str, int]] = Counter()
    for request in backend.requests:
        if request.status == 200:
            for event in request.body["events"]:
                seen[(event["name"], event["props"]["session_id"])] += 1
    return seen


async def test_an_analytics_backend_outage_loses_no_event(tmp_path: Path) -> None:
    async with Backend() as backend:
        args = ("--recorder", backend.url, "--log-level", "INFO", "--room-grace", "60")
        async with rtc_process(tmp_path, *args) as server:
            url = server.room_url()

            def arrived(*keys: tuple[str, int]) -> bool:
                return all(key in delivered(backend) for key in keys)

            # 500s, then it recovers.
            backend.script.extend([Reply(500), Reply(503)])
            async with YClient.connect(url, 111, user=1) as ada:
                await ada.wait(ada.synced.is_set)
            with anyio.fail_after(TIMEOUT):
                await backend.wait_until(lambda: arrived(
                    ("jetpack_rtc_join", 111), ("jetpack_rtc_leave", 111)))

            # A request that hangs (the sink's timeout is 10 s), then it recovers.
            backend.script.append(Reply(hang=True))
            async with YClient.connect(url, 222, user=2) as bob:
                await bob.wait(bob.synced.is_set)
            with anyio.fail_after(TIMEOUT + 15):
                await backend.wait_until(lambda: arrived(
                    ("jetpack_rtc_join", 222), ("jetpack_rtc_leave", 222)))

            # Connections refused, then the backend is back on the same port.
            await backend.stop()
            async with YClient.connect(url, 333, user=3) as carol:
                await carol.wait(carol.synced.is_set)
            await server.wait_log("sink unavailable, retrying")
            await backend.start()
            with anyio.fail_after(TIMEOUT + 10):
                await backend.wait_until(lambda: arrived(
                    ("jetpack_rtc_join", 333), ("jetpack_rtc_leave", 333)))
            assert await server.terminate() == 0

        assert delivered(backend) == {
            (f"jetpack_rtc_{kind}", session): 1
            for kind in ("join", "leave")
            for session in (111, 222, 333)
        }
        assert max(backend.received.values()) == 1  # no event id twice


async def test_an_outage_longer_than_the_retries_loses_no_event(tmp_path: Path) -> None:
    """Past the retry budget (5 attempts, ~4-8 s) a batch goes to the spool, not away."""
    async with Backend() as backend:
        args = ("--recorder", backend.url, "--log-level", "INFO")
        async with rtc_process(tmp_path, *args) as server:
            await backend.stop()
            async with YClient.connect(server.room_url(), 111, user=1) as ada:
                await ada.wait(ada.synced.is_set)
            # The join and the leave both went to the spool: the retries ran out.
            await until_spooled(server, 2, within=TIMEOUT + 10)
            assert backend.requests == []
            await backend.start()
            assert await server.terminate() == 0
        assert delivered(backend) == {("jetpack_rtc_join", 111): 1, ("jetpack_rtc_leave", 111): 1}
