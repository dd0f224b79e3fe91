"""Benchmark the tracks recorders: record() cost, sustained SQLite ingest, bytes on disk.

Run: .venv/bin/python bench/bench_tracks.py [--events 1000000] [--dir DIR]

Targets (2-core dev machine): record() <= 5 us per call; SQLite ingest >= 50,000
events/s sustained; 1,000,000 stored events <= 300 MB on disk. Prints numbers;
asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import tempfile
import time
import uuid
from pathlib import Path

import anyio
import anyio.lowlevel

from tracks import Event, JSONValue, SqliteRecorder, Tracker
from tracks.sinks.memory import MemorySink

RANDOM = random.Random(2)


def realistic_event(n: int, *, ts: int) -> Event:
    """Shaped like the server's presence events (rtc/extensions/tracking.py), in a
    plausible mix: 45% join, 45% leave, 5% connection_error, 5% blocked; ids random
    like its uuid5 ones."""
    props: dict[str, JSONValue] = {
        "blog_id": 100_000 + n % 5_000,
        "post_id": n % 40_000,
        "session_id": (n * 2_654_435_761) % 2**31,  # a Yjs clientID
        "wp_user_id": 1_000 + n % 20_000,
    }
    kind = n % 20
    if kind < 9:
        name = "jetpack_rtc_join"
        props |= {
            "transport": "websocket",
            "contributors": [1_000 + n % 20_000, 1_001],
            "contributor_count": 2,
            "session_count": 3,
            "post_type": "post",
        }
    elif kind < 18:
        name = "jetpack_rtc_leave"
        props |= {"duration_ms": n % 3_600_000, "clean": True, "updates": n % 500}
    elif kind < 19:
        name = "jetpack_rtc_connection_error"
        props |= {"error_code": "auth_failed", "close_code": 4401}
    else:
        name = "jetpack_rtc_blocked"
        props |= {
            "contributors": [1, 2, 3],
            "contributor_count": 3,
            "session_count": 5,
            "limit": 3,
            "limit_kind": "contributors",
        }
    return Event(name, props, ts=ts + n, event_id=str(uuid.UUID(bytes=RANDOM.randbytes(16))))


async def bench_record(count: int) -> None:
    events = [realistic_event(n, ts=1_700_000_000_000) for n in range(count)]

    # Timed inside the recorder's one lifecycle, with its writer parked on its wakeup:
    # the path a server's record() calls take. The loop never yields, so the writer
    # drains only after the timing, when the block exits.
    async with Tracker(MemorySink(), queue_size=count + 1) as recorder:
        await anyio.wait_all_tasks_blocked()
        start = time.perf_counter_ns()
        for event in events:
            recorder.record(event)
        room = (time.perf_counter_ns() - start) / count

    async with Tracker(MemorySink(), queue_size=1_000) as full:  # every call evicts the oldest
        await anyio.wait_all_tasks_blocked()
        for event in events[:1_000]:
            full.record(event)
        start = time.perf_counter_ns()
        for event in events:
            full.record(event)
        dropping = (time.perf_counter_ns() - start) / count

    start = time.perf_counter_ns()
    for n in range(count):
        realistic_event(n, ts=1_700_000_000_000)
    creating = (time.perf_counter_ns() - start) / count

    print(f"record(), queue with room:       {room / 1000:6.2f} us/call   (target <= 5 us)")
    print(f"record(), full queue (dropping): {dropping / 1000:6.2f} us/call")
    print(f"Event(...) creation, 7-9 props: {creating / 1000:6.2f} us/event (caller side)")


async def bench_sqlite(count: int, directory: Path) -> None:
    path = directory / "bench.sqlite"
    events = [realistic_event(n, ts=1_700_000_000_000) for n in range(count)]
    recorder = SqliteRecorder(path, queue_size=count + 1)
    async with recorder:
        start = time.perf_counter()
        cpu_start = time.process_time()
        # Producer paced like a busy server: a chunk, then back to the loop.
        for index in range(0, count, 1_000):
            for event in events[index : index + 1_000]:
                recorder.record(event)
            await anyio.lowlevel.checkpoint()
        recorded = time.perf_counter()
        await recorder.flush()
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu_start
    stats = recorder.stats
    print(
        f"SQLite ingest: {count:,} events in {elapsed:.2f} s = {count / elapsed:,.0f} events/s"
        f" sustained (target >= 50,000); recording took {recorded - start:.2f} s;"
        f" written={stats.written:,} dropped={stats.dropped};"
        f" process CPU {cpu:.2f} s = {cpu / count * 1e6:.1f} us/event"
    )

    connection = sqlite3.connect(path)
    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    rows = connection.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    connection.close()
    size = sum(p.stat().st_size for p in (path, path.with_name(path.name + "-wal")) if p.exists())
    per_million = size / rows * 1_000_000
    print(
        f"On disk: {size / 1e6:,.1f} MB for {rows:,} events = {size / rows:.0f} B/event"
        f" -> {per_million / 1e6:,.0f} MB per 1,000,000 events (target <= 300 MB)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--record-calls", type=int, default=200_000)
    parser.add_argument("--dir", type=Path, help="where the SQLite file goes (default: a temp dir)")
    args = parser.parse_args()
    print(f"cpus={os.cpu_count()} sqlite={sqlite3.sqlite_version}")
    anyio.run(bench_record, args.record_calls)
    if args.dir:
        args.dir.mkdir(parents=True, exist_ok=True)
        anyio.run(bench_sqlite, args.events, args.dir)
    else:
        with tempfile.TemporaryDirectory() as directory:
            anyio.run(bench_sqlite, args.events, Path(directory))


if __name__ == "__main__":
    main()
