"""Presence stats over 10,000,000 PostgreSQL events: rollup once, then time every figure.

Run: .venv/bin/python bench/bench_postgresql_stats.py --url postgresql://postgres@127.0.0.1/DB
     [--events 10000000] [--days 90] [--repeat 5] [--chunk 20000000]

The events are COPYed straight into the store when it holds none yet (see
bench/bench_stats.py, whose generator and timing loop this reuses), so the table can be
built once and the queries run again. ``--chunk``: ids per rollup transaction. The
generator spreads each chunk's events over all 90 days, so every chunk would recompute
every post's peaks from the whole table; a server's events arrive in time order and its
chunks touch only recent days, so one large chunk is the faithful stand-in.
Prints the median ms of each figure for all / one blog / one post, rolled up and with 500
fresh events since the last rollup; asserts nothing.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_stats import _postgresql_mb, _postgresql_write, ingest_postgresql, run
from tracks.presence.postgresql import PostgresStatsStore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--chunk", type=int, default=20_000_000)
    args = parser.parse_args()
    now_ms = time.time_ns() // 1_000_000
    ingest_postgresql(args.url, args.events, args.days, now_ms)
    with PostgresStatsStore(args.url) as store:
        store.aggregate = functools.partial(store.aggregate, chunk=args.chunk)  # type: ignore[method-assign]
        run(store, args, now_ms, functools.partial(_postgresql_write, args.url),
            lambda: f"{_postgresql_mb(args.url):,.0f} MB")


if __name__ == "__main__":
    main()
