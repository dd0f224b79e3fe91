"""Benchmark the PostgreSQL recorder: sustained ingest, record() cost, bytes on disk.

Run: .venv/bin/python bench/bench_postgresql.py [--events 1000000]
     [--server postgresql://postgres@127.0.0.1:5432]

Creates a database named ``tracks_bench_<random>`` on the server and drops it at the end.
Targets (issue 13, 2-core machine): >= 100,000 events/s sustained with nothing dropped;
record() cost as for every `Tracker` (bench_tracks.py); disk per 1,000,000 events
(table + indexes + event_ids). Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from pathlib import Path

import anyio
import anyio.lowlevel
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_tracks import bench_record, realistic_event
from tracks import PostgresRecorder


async def bench_ingest(count: int, url: str) -> None:
    events = [realistic_event(n, ts=1_700_000_000_000) for n in range(count)]
    recorder = PostgresRecorder(url, queue_size=count + 1)
    async with recorder:
        # Connect and migrate before the clock starts: a server does that at start-up.
        recorder.record(events[0])
        await recorder.flush()
        start = time.perf_counter()
        cpu_start = time.process_time()
        # Producer paced like a busy server: a chunk, then back to the loop.
        for index in range(1, count, 1_000):
            for event in events[index : index + 1_000]:
                recorder.record(event)
            await anyio.lowlevel.checkpoint()
        recorded = time.perf_counter()
        await recorder.flush()
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu_start
    stats = recorder.stats
    print(
        f"PostgreSQL ingest: {count:,} events in {elapsed:.2f} s = {count / elapsed:,.0f}"
        f" events/s sustained (target >= 100,000); recording took {recorded - start:.2f} s;"
        f" written={stats.written:,} dropped={stats.dropped};"
        f" client process CPU {cpu:.2f} s = {cpu / count * 1e6:.1f} us/event"
    )


def report_disk(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute("VACUUM ANALYZE")
        rows = connection.execute("SELECT count(*) FROM events").fetchone()
        assert rows is not None
        sizes = connection.execute(
            "SELECT c.relname, pg_table_size(c.oid), pg_indexes_size(c.oid)"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public' AND c.relkind = 'r'"
        ).fetchall()
    count = rows[0]
    table = sum(size for _, size, _ in sizes)
    indexes = sum(size for _, _, size in sizes)
    for name, table_size, index_size in sorted(sizes):
        print(f"  {name}: table {table_size / 1e6:,.1f} MB, indexes {index_size / 1e6:,.1f} MB")
    total = table + indexes
    print(
        f"On disk: {total / 1e6:,.1f} MB for {count:,} events = {total / count:.0f} B/event"
        f" (tables {table / count:.0f} B, indexes {indexes / count:.0f} B)"
        f" -> {total / count:,.0f} MB per 1,000,000 events"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--record-calls", type=int, default=200_000)
    parser.add_argument("--server", default="postgresql://postgres@127.0.0.1:5432")
    args = parser.parse_args()
    name = f"tracks_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(f"{args.server}/postgres", autocommit=True) as admin:
        version = admin.execute("SHOW server_version").fetchone()
        admin.execute(f'CREATE DATABASE "{name}"')
    print(f"cpus={os.cpu_count()} postgresql={version[0] if version else '?'}"
          f" psycopg={psycopg.__version__}")
    url = f"{args.server}/{name}"
    try:
        anyio.run(bench_record, args.record_calls)
        anyio.run(bench_ingest, args.events, url)
        report_disk(url)
    finally:
        with psycopg.connect(f"{args.server}/postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
