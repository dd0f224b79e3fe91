"""The ``tracks`` command: ``tracks tail SOURCE`` and ``tracks report SOURCE``.

The only place in `tracks` that parses arguments, prints, and configures logging.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime

from tracks.event import Event, json_text
from tracks.stats import Report, Scope, open_store, report
from tracks.store import follow

__all__ = ["main", "parse_duration"]

DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def parse_duration(text: str) -> int:
    """``"7d"``, ``"24h"``, ``"30m"``, ``"90s"`` or ``"2w"`` to milliseconds.

    Raises:
        ValueError: anything else.
    """
    match = DURATION.match(text)
    if match is None:
        raise ValueError(f"bad duration {text!r}: expected a number and s, m, h, d or w (e.g. 7d)")
    return int(match[1]) * UNIT_SECONDS[match[2]] * 1000


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


def format_report(result: Report) -> str:
    lines = [f"events: {result.events}"]
    lines += [f"  {name}: {count}" for name, count in result.events_by_name.items()]
    lines += [
        f"unique sessions: {result.unique_sessions}",
        f"unique users: {result.unique_users}",
        f"unique posts: {result.unique_posts}",
        f"blocked: {result.blocked}",
        "connection errors by code:" + ("" if result.connection_errors_by_code else " none"),
    ]
    lines += [f"  {code}: {count}" for code, count in result.connection_errors_by_code.items()]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tracks", description="Read recorded events.")
    commands = parser.add_subparsers(dest="command", required=True)

    tail = commands.add_parser("tail", help="follow a sqlite or jsonl store, one line per event")
    tail.add_argument("source", help="a store path, or a sqlite:… / jsonl:… URL")
    tail.add_argument("-n", "--lines", type=int, default=10, help="events to show first")
    tail.add_argument("--no-follow", action="store_true", help="stop at the end of the store")
    tail.add_argument("--json", action="store_true", help="print JSON lines instead")
    tail.add_argument("--interval", type=float, default=0.5, help="poll interval in seconds")

    rep = commands.add_parser("report", help="counts over a sqlite or jsonl store")
    rep.add_argument("source", help="a store path, or a sqlite:… / jsonl:… URL")
    rep.add_argument("--blog-id", type=int)
    rep.add_argument("--post-id", type=int)
    rep.add_argument("--since", type=_duration, metavar="DURATION", help="e.g. 7d, 24h, 30m")
    rep.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "tail":
            return _tail(args)
        return _report(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"tracks: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _tail(args: argparse.Namespace) -> int:
    for event in follow(
        args.source, last=args.lines, poll_interval=args.interval, forever=not args.no_follow
    ):
        print(json_text(event.to_json()) if args.json else format_event(event), flush=True)
    return 0


def _report(args: argparse.Namespace) -> int:
    since_ms = None if args.since is None else time.time_ns() // 1_000_000 - args.since
    scope = Scope(blog_id=args.blog_id, post_id=args.post_id, since_ms=since_ms)
    with open_store(args.source) as connection:
        result = report(connection, scope)
    print(json.dumps(result.to_json(), indent=2) if args.json else format_report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
