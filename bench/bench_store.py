"""Document persistence: rtc's batched document stores against pycrdt-store's SQLiteYStore.

Writes the same stream of real Yjs updates (one typed character each) through each and
prints updates persisted per second and the CPU the writing process spent per update.
With `--postgresql URL` (an empty database you own: it gets a `documents` table) rtc's
PostgreSQL store runs too. A script that prints numbers, not a test:

    .venv/bin/python bench/bench_store.py [--updates 5000] [--postgresql postgresql://…]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
from pycrdt import Doc, Text

from rtc.documents import open_documents
from rtc.ids import RoomKey


def updates(count: int) -> list[bytes]:
    doc: Doc[Any] = Doc()
    text = doc.get("content", type=Text)
    produced: list[bytes] = []
    doc.observe(lambda event: produced.append(event.update))
    for index in range(count):
        text += "abcdefghij"[index % 10]
    return produced


async def ours(url: str, stream: list[bytes]) -> tuple[float, float]:
    key = RoomKey(1, 1)
    started, cpu = time.perf_counter(), time.process_time()
    async with open_documents(url, flush_interval=0.1) as store:
        for update in stream:
            store.append(key, update)
            await anyio.lowlevel.checkpoint()  # one update per message, other work between
        await store.flush()
    elapsed, spent = time.perf_counter() - started, time.process_time() - cpu
    async with open_documents(url) as store:
        assert len(await store.load(key)) >= len(stream)  # a reused database holds more
    return elapsed, spent


async def rtc_sqlite(path: Path, stream: list[bytes]) -> tuple[float, float]:
    return await ours(f"sqlite://{path}", stream)  # an absolute temp path


async def pycrdt_store(path: Path, stream: list[bytes]) -> tuple[float, float]:
    from pycrdt.store import SQLiteYStore

    class Store(SQLiteYStore):
        db_path = str(path)

    started, cpu = time.perf_counter(), time.process_time()
    async with Store("rooms/1/1") as store:
        for update in stream:
            await store.write(update)
    return time.perf_counter() - started, time.process_time() - cpu


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=5000)
    parser.add_argument("--postgresql", metavar="URL", help="also rtc's PostgreSQL store")
    args = parser.parse_args()
    stream = updates(args.updates)
    print(f"{len(stream)} updates of one typed character each")

    def report(name: str, elapsed: float, cpu: float) -> None:
        print(
            f"{name:28} {len(stream) / elapsed:10,.0f} updates/s"
            f"  {cpu / len(stream) * 1e6:8.1f} µs CPU/update (writer process)"
        )

    with tempfile.TemporaryDirectory() as tmp:
        for name, run in (
            ("rtc SqliteDocuments", rtc_sqlite), ("pycrdt-store SQLiteYStore", pycrdt_store)
        ):
            report(name, *await run(Path(tmp) / f"{name.split()[1]}.sqlite", stream))
    if args.postgresql:
        report("rtc PostgresDocuments", *await ours(args.postgresql, stream))


if __name__ == "__main__":
    anyio.run(main)
