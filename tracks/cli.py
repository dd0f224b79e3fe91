"""The ``tracks`` command: ``tail``, ``report``, ``aggregate``, ``prune``, ``archive``.

The only place in `tracks` that parses arguments, prints, and configures logging.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import sqlite3
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import NoReturn, cast

from tracks import __version__
from tracks.event import Event, JSONValue, json_text, now_ms
from tracks.presence import sqlite_schema as schema
from tracks.presence.archive import archive_store
from tracks.presence.figures import DAY_MS
from tracks.presence.postgresql import PostgresStatsStore
from tracks.presence.postgresql_archive import archive_postgresql
from tracks.presence.postgresql_reading import is_postgresql_url
from tracks.presence.postgresql_schema import SchemaError, parse_url
from tracks.presence.reading import follow, locate
from tracks.presence.retention import check_retention, parse_duration
from tracks.presence.rollup import rollup_state
from tracks.presence.stats import Scope, parse_day
from tracks.presence.stores import open_stats_store

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    """Misuse ends with one line on stderr and exit status 2 (`--help` shows the usage)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


def _count(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise argparse.ArgumentTypeError(f"not a whole number >= 0: {text!r}")
    return int(text)


def _id(text: str) -> int:
    if not (text.isascii() and text.isdigit() and 0 < int(text) < 2**63):
        raise argparse.ArgumentTypeError(f"not a positive integer below 2**63: {text!r}")
    return int(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"not a number of seconds > 0: {text!r}")
    return value


def _duration(text: str) -> int:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def format_event(event: Event) -> str:
    """One line: UTC time, name, then the properties as key=value."""
    when = datetime.fromtimestamp(event.ts / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
    props = " ".join(f"{key}={json_text(value)}" for key, value in event.props_json().items())
    return f"{when}Z {event.name} {props}".rstrip()


_DAY_COLUMNS = (
    "joins", "unique_sessions", "unique_users", "unique_posts", "sessions_per_user",
    "peak_concurrent_sessions", "peak_concurrent_users", "duration_p50_ms", "duration_p90_ms",
    "blocked", "blocked_rate", "connection_errors",
)


def _row(figures: dict[str, JSONValue]) -> list[str]:
    durations = cast(dict[str, JSONValue], figures["session_duration_ms"])
    errors = cast(dict[str, JSONValue], figures["connection_errors_by_code"])
    values = {
        **figures,
        "duration_p50_ms": durations["p50"],
        "duration_p90_ms": durations["p90"],
        "connection_errors": " ".join(f"{code}={n}" for code, n in errors.items()),
    }
    return ["" if values[name] is None else str(values[name]) for name in _DAY_COLUMNS]


def format_csv(result: dict[str, JSONValue]) -> str:
    """One row per day, then a ``total`` row (the range's distinct counts and peaks)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["day", *_DAY_COLUMNS])
    for day in cast(list[dict[str, JSONValue]], result["daily"]):
        writer.writerow([day["day"], *_row(day)])
    writer.writerow(["total", *_row(result)])
    return out.getvalue().rstrip("\n")


def format_table(result: dict[str, JSONValue]) -> str:
    """Totals as ``name: value`` lines, then the days and the top posts as aligned tables."""
    total = _row(result)
    lines = [f"{name}: {value or '-'}" for name, value in zip(_DAY_COLUMNS, total, strict=True)]
    table = [["day", *_DAY_COLUMNS[:-1]]]
    for day in cast(list[dict[str, JSONValue]], result["daily"]):
        table.append([str(day["day"]), *_row(day)[:-1]])
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines.append("")
    lines += ["  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True))
              for row in table]
    top = cast(list[dict[str, JSONValue]], result["top_posts"])
    lines.append("")
    lines.append("top posts (blog/post: unique sessions):" + ("" if top else " none"))
    for post in top:
        lines.append(f"  {post['blog_id']}/{post['post_id']}: {post['unique_sessions']}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tracks", description="Read recorded events.")
    parser.add_argument("--version", action="version", version=f"tracks {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    tail = commands.add_parser(
        "tail", help="follow a sqlite, postgresql or jsonl store, one line per event"
    )
    tail.add_argument(
        "source", help="a store path, or a sqlite:… / jsonl:… / postgresql://… URL"
    )
    tail.add_argument("-n", "--lines", type=_count, default=10, help="events to show first")
    tail.add_argument("--no-follow", action="store_true", help="stop at the end of the store")
    tail.add_argument("--json", action="store_true", help="print JSON lines instead")
    tail.add_argument("--interval", type=_seconds, default=0.5, help="poll interval in seconds")

    rep = commands.add_parser(
        "report", help="presence figures over a sqlite or jsonl store (whole UTC days)"
    )
    rep.add_argument("source", help="a store path, or a sqlite:… / jsonl:… / postgresql://… URL")
    rep.add_argument("--blog-id", type=_id)
    rep.add_argument("--post-id", type=_id)
    rep.add_argument(
        "--since", metavar="DAY",
        help="first day: YYYY-MM-DD, or 7d for the last 7 days (today included)",
    )
    rep.add_argument("--until", metavar="DAY", help="last day (included): YYYY-MM-DD or 1d ago")
    rep.add_argument("--format", choices=["table", "json", "csv"], default="table")
    rep.add_argument("--json", action="store_true", help="shorthand for --format json")

    agg = commands.add_parser("aggregate", help="fold new events into the daily rollups")
    agg.add_argument("source", help="a SQLite store path, sqlite:… or postgresql://… URL")

    prune = commands.add_parser(
        "prune", help="roll up, then delete raw events older than a duration (rollups stay)"
    )
    prune.add_argument("source", help="a SQLite store path, sqlite:… or postgresql://… URL")
    prune.add_argument(
        "--older-than", type=_duration, required=True, metavar="DURATION", help="e.g. 90d"
    )
    _add_archive_arguments(commands, rep)
    return parser


def _add_archive_arguments(
    commands: argparse._SubParsersAction[_Parser], report: argparse.ArgumentParser
) -> None:
    report.add_argument(
        "--archive", metavar="DIR", help="also count the events archived in DIR (tracks archive)"
    )
    archive = commands.add_parser(
        "archive",
        help="roll up, then move raw events older than a duration to day files of gzip JSONL",
    )
    archive.add_argument("source", help="a SQLite store path, sqlite:… or postgresql://… URL")
    archive.add_argument(
        "--older-than", type=_duration, required=True, metavar="DURATION", help="e.g. 90d"
    )
    archive.add_argument("--to", required=True, metavar="DIR", help="the archive directory")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "tail":
            return _tail(args)
        if args.command == "aggregate":
            return _aggregate(args)
        if args.command == "prune":
            return _prune(args)
        if args.command == "archive":
            return _archive(args)
        return _report(args)
    except (OSError, ValueError, sqlite3.Error, ImportError, SchemaError) as exc:
        # A missing or unreadable store, a file that is not one, a malformed day, no
        # psycopg, no event store in that database: one line.
        print(f"tracks: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        psycopg = sys.modules.get("psycopg")
        if psycopg is None or not isinstance(exc, psycopg.Error):
            raise
        # Unreachable, refused, authentication failed: libpq's first line says which.
        print(f"tracks: {str(exc).strip().splitlines()[0]}", file=sys.stderr)
        return 2


def _tail(args: argparse.Namespace) -> int:
    try:
        for event in follow(
            args.source, last=args.lines, poll_interval=args.interval, forever=not args.no_follow
        ):
            print(json_text(event.to_json()) if args.json else format_event(event), flush=True)
    except (ImportError, RuntimeError) as exc:
        # No psycopg, or no event store in that database (SchemaError): one line.
        print(f"tracks: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        psycopg = sys.modules.get("psycopg")
        if psycopg is None or not isinstance(exc, psycopg.Error):
            raise
        # Unreachable, refused, authentication failed: libpq's first line says which.
        print(f"tracks: {str(exc).strip().splitlines()[0]}", file=sys.stderr)
        return 2
    return 0


def _report(args: argparse.Namespace) -> int:
    now = now_ms()
    scope = Scope(
        blog_id=args.blog_id,
        post_id=args.post_id,
        since_day=None if args.since is None else parse_day(args.since, now_ms=now),
        until_day=None if args.until is None else parse_day(args.until, now_ms=now, until=True),
    )
    with open_stats_store(args.source, archive=args.archive) as store:
        result = store.stats(scope, now_ms=now)
    fmt = "json" if args.json else args.format
    if fmt == "json":
        print(json.dumps(result, indent=2))
    elif fmt == "csv":
        print(format_csv(result))
    else:
        print(format_table(result))
    return 0


def _sqlite_only(source: str) -> None:
    if not is_postgresql_url(source) and locate(source)[0] != "sqlite":
        raise ValueError(f"{source}: rollups and pruning need a SQLite or PostgreSQL store")


def _aggregate(args: argparse.Namespace) -> int:
    _sqlite_only(args.source)
    with open_stats_store(args.source) as store:
        started = time.perf_counter()
        events = store.aggregate(now_ms=now_ms())
    print(f"rolled up {events} events in {time.perf_counter() - started:.2f}s")
    return 0


def _prune(args: argparse.Namespace) -> int:
    _sqlite_only(args.source)
    check_retention(args.older_than, name="--older-than")
    with open_stats_store(args.source) as store:
        now = now_ms()
        store.aggregate(now_ms=now)
        deleted = store.prune(before_ms=now - args.older_than)
    print(f"deleted {deleted} raw events older than {args.older_than // DAY_MS} days")
    return 0


def _archive(args: argparse.Namespace) -> int:
    _sqlite_only(args.source)
    check_retention(args.older_than, name="--older-than")
    now = now_ms()
    if is_postgresql_url(args.source):
        with PostgresStatsStore(args.source) as store:
            store.aggregate(now_ms=now)
            rolled_up_to = store.rolled_up_to()
        result = archive_postgresql(
            args.source, args.to, before_ms=now - args.older_than, upto_id=rolled_up_to
        )
        shown = parse_url(args.source).description
        print(
            f"archived {result.archived} events of {len(result.days)} days to {args.to};"
            f" deleted {result.deleted} from {shown}"
        )
        return 0
    path = locate(args.source)[1]
    # Roll up first, so the store's own figures keep the days that leave it, and archive only
    # rows the rollups hold.
    with open_stats_store(path) as store:
        store.aggregate(now_ms=now)
    connection = schema.connect(path, readonly=True)
    try:
        rolled_up_to, _ = rollup_state(connection)
    finally:
        connection.close()
    result = archive_store(path, args.to, before_ms=now - args.older_than, upto_id=rolled_up_to)
    print(
        f"archived {result.archived} events of {len(result.days)} days to {args.to};"
        f" deleted {result.deleted} from {path}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
