"""`rtc` / `python -m rtc`: the command line. The only place that reads the environment and
configures logging."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import anyio

from .config import ConfigError, ServerConfig
from .server import RtcServer

__all__ = ["main"]

_DEFAULTS = ServerConfig()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rtc",
        description="Real-time collaboration presence tracker: a Yjs (y-websocket) room server "
        "that knows who is editing which post and records join/blocked/connection_error/leave "
        "events.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="run the room server with the demo page",
        description="Run the WebSocket room server, the HTTP API and the demo page. Every flag "
        "can also come from the RTC_* environment variable named in brackets; a flag wins.",
        argument_default=argparse.SUPPRESS,
    )
    d = _DEFAULTS

    def option(flag: str, text: str, default: object, **kwargs: object) -> None:
        env = "RTC_" + flag.removeprefix("--").replace("-", "_").upper()
        serve.add_argument(flag, help=f"{text} (default: {default}) [{env}]", **kwargs)  # type: ignore[arg-type]

    option("--host", "interface to listen on", d.host)
    option("--port", "TCP port, 0 = any free port", d.port, type=int)
    option(
        "--data-dir", "folder for documents.sqlite and the default events.sqlite", d.data_dir,
        type=Path,
    )
    option(
        "--recorder",
        "where events go, repeatable: sqlite:///abs.sqlite, sqlite://rel.sqlite, "
        "jsonl:///abs.jsonl, jsonl:-, http(s)://..., memory:, none; the variable takes "
        "several separated by spaces",
        "sqlite:///<data-dir>/events.sqlite",
        action="append", dest="recorders", metavar="URL",
    )
    option(
        "--max-contributors",
        "distinct users per room; a new user beyond it is closed with 4429, 0 = unlimited",
        d.max_contributors, type=int,
    )
    option(
        "--max-connections-per-room", "sessions per room (hard cap, close 4429), 0 = unlimited",
        d.max_connections_per_room, type=int,
    )
    option("--event-prefix", "prefix of event names", d.event_prefix)
    option(
        "--max-message-size", "largest accepted frame in bytes; larger closes with 1009",
        d.max_message_size, type=int,
    )
    option("--ping-interval", "seconds between keepalive pings", d.ping_interval, type=float)
    option(
        "--ping-timeout", "seconds to answer a ping before the peer is closed", d.ping_timeout,
        type=float,
    )
    option(
        "--announce-timeout",
        "seconds a connection has to send the awareness update naming its session, "
        "then it is closed with 4408",
        d.announce_timeout, type=float,
    )
    option(
        "--room-grace", "seconds an empty room stays in memory before it is unloaded",
        d.room_grace, type=float,
    )
    option(
        "--outbox-limit", "bytes that may wait for one slow peer before it is closed with 1013",
        d.outbox_limit, type=int,
    )
    option("--demo-dir", "folder the demo page is served from", "<repo>/demo", type=Path)
    option(
        "--log-level", "logging level", d.log_level,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"], type=str.upper,
    )
    return parser


def _config(args: argparse.Namespace, environ: dict[str, str]) -> ServerConfig:
    """Flags given on the command line win over RTC_* variables, which win over defaults."""
    values = ServerConfig.from_env(environ)
    given = {name: value for name, value in vars(args).items() if name != "command"}
    if "recorders" in given:
        given["recorders"] = tuple(given["recorders"])
    values.update(given)
    return ServerConfig(**values)  # type: ignore[arg-type]


async def _serve(config: ServerConfig) -> None:
    async with RtcServer(config) as server:
        port = server.port
        base = f"{config.host}:{port}"
        print(f"rtc listening on http://{base}", flush=True)
        print(f"  WebSocket: ws://{base}/rooms/{{blog_id}}/{{post_id}}", flush=True)
        print(f"  Demo:      http://{base}/", flush=True)
        print(f"  Stats:     http://{base}/api/rooms  http://{base}/metrics", flush=True)
        for recorder in server.recorders:
            print(f"  Events:    {recorder.description}", flush=True)
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                print(f"rtc: {signal.Signals(signum).name}, shutting down", flush=True)
                break


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = _config(args, dict(os.environ))
    except (ConfigError, ValueError, TypeError) as error:
        print(f"rtc: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    anyio.run(_serve, config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
