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
from typing import NoReturn

import anyio

from rtc.app import RtcServer
from rtc.auth import Scope, issue, issue_scoped
from rtc.config import ConfigError, ServerConfig
from rtc.ids import id_from_text
from rtc.workers import WorkerLink, supervise, wait_for_stop
from tracks import __version__
from tracks.presence.retention import parse_duration
from tracks.streams import StreamConfigError, load_streams

__all__ = ["main"]

_DEFAULTS = ServerConfig()


class _Parser(argparse.ArgumentParser):
    """Misuse ends with one line on stderr and exit status 2 (`--help` shows the usage)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


def _id(text: str) -> int:
    value = id_from_text(text)
    if value is None:
        raise argparse.ArgumentTypeError(f"not a positive integer: {text!r}")
    return value


def _post_id(text: str) -> int | None:
    return None if text == "*" else _id(text)


def _ttl(text: str) -> float:
    try:
        return parse_duration(text, unit="s") / 1000
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="rtc",
        description="Real-time collaboration presence tracker: a Yjs (y-websocket) room server "
        "that knows who is editing which post and records join/blocked/connection_error/leave "
        "events.",
    )
    parser.add_argument("--version", action="version", version=f"rtc {__version__}")
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
        "--documents",
        "where rooms' documents are stored: sqlite:///abs.sqlite or postgresql://user@host/db",
        "sqlite:///<data-dir>/documents.sqlite", metavar="URL",
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
    option("--demo-dir", "folder the demo page is served from",
           "the installed pages (rtc/pages), else <repo>/demo", type=Path)
    option(
        "--log-level", "logging level", d.log_level,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"], type=str.upper,
    )
    option(
        "--secret",
        "HS256 secret (32+ bytes) for room tokens; every connection then needs "
        "?token= (see `rtc token`); without it the server runs open",
        "none",
    )
    option(
        "--secret-file",
        "read the secret from this file (first line) instead: it does not show in `ps`",
        "none", type=Path,
    )
    option(
        "--max-token-ttl",
        "seconds a token may live from issue to expiry; longer-lived tokens are refused",
        d.max_token_ttl, type=float,
    )
    option(
        "--allowed-origin",
        "Origin a browser handshake may come from, repeatable; others get HTTP 403; "
        "clients without an Origin are let in only when tokens are on",
        "any", action="append", dest="allowed_origins", metavar="ORIGIN",
    )
    option(
        "--max-messages-per-second",
        "a connection's sustained message allowance (awareness echoes count 1/20); "
        "beyond it the connection is closed with 1008 rate-limited",
        d.max_messages_per_second, type=float,
    )
    option("--message-burst", "messages a connection may send at once", d.message_burst,
           type=int)
    option(
        "--bytes-per-second",
        "a connection's sustained allowance of bytes sent; beyond it the connection is closed "
        "with 1008 rate-limited",
        d.bytes_per_second, type=float,
    )
    option("--byte-burst", "bytes a connection may send at once", d.byte_burst, type=int)
    option(
        "--max-held-bytes",
        "bytes held from one connection before it names its session (then it is closed)",
        d.max_held_bytes, type=int,
    )
    option(
        "--max-held-total",
        "bytes held from all connections not yet named; beyond it newcomers get 1013",
        d.max_held_total, type=int,
    )
    option(
        "--max-document-size",
        "bytes a room's stored document may grow to; an update beyond it is refused, "
        "0 = unlimited",
        d.max_document_size, type=int,
    )
    option(
        "--max-connections-per-ip", "open connections from one address (HTTP 429), 0 = unlimited",
        d.max_connections_per_ip, type=int,
    )
    option("--max-rooms", "rooms loaded at once (close 4503), 0 = unlimited", d.max_rooms,
           type=int)
    option(
        "--max-connections", "open connections in total (HTTP 503), 0 = unlimited",
        d.max_connections, type=int,
    )
    option(
        "--streams",
        "stream configuration (TOML or JSON): which events are accepted from the server and "
        "from browsers, required props, sampling by session, recorders",
        "built-in presence + client_errors streams", type=Path,
    )
    option(
        "--ingest-window",
        "seconds of the dedupe bucket for client events sent without an event_id",
        d.ingest_window, type=float,
    )
    option(
        "--ingest-rate", "client event batches per second one address may post (HTTP 429)",
        d.ingest_rate, type=float,
    )
    option("--ingest-burst", "client event batches one address may post at once",
           d.ingest_burst, type=int)
    option(
        "--rollup-interval",
        "seconds between stats rollups of the SQLite event store, 0 = never",
        d.rollup_interval, type=float,
    )
    option(
        "--archive-dir",
        "where `tracks archive --to` put old events: session timelines read those days too",
        "none", type=Path,
    )
    option(
        "--max-stats-days", "the longest range GET /api/stats answers (HTTP 400 beyond)",
        d.max_stats_days, type=int,
    )
    option(
        "--cluster",
        "redis://HOST:PORT/DB: run as one node of a cluster sharing rooms through that Redis "
        "(needs --documents postgresql://… and a PostgreSQL or HTTP --recorder)",
        "none: one node, no Redis",
    )
    option("--node-id", "this node's name in the cluster", "a unique id per process")
    option(
        "--node-timeout",
        "seconds without a heartbeat after which a node's sessions are reaped by another node",
        d.node_timeout, type=float,
    )
    option(
        "--workers",
        "worker processes sharing the port, each a cluster node (above 1 needs --cluster)",
        d.workers, type=int,
    )
    option(
        "--forwarded-allow-ips",
        "proxies trusted to name the client in X-Forwarded-For/Forwarded: addresses or "
        "CIDRs, comma-separated",
        "none trusted", type=lambda text: tuple(p.strip() for p in text.split(",") if p.strip()),
    )
    option(
        "--retention-days",
        "prune raw events older than this after each rollup (rollups stay), 0 = keep forever",
        d.retention_days, type=int,
    )

    token = commands.add_parser(
        "token",
        help="print a room token or an API token (JWT, HS256) for integrators and the demo",
        description="Print a token that lets a user into one post's room (or every post of "
        "a blog with --post-id '*'), or with --scope a short-lived token for the HTTP API: "
        "read (rosters, feeds, session timelines, stats, metrics) or admin (also kick and "
        "capture control).",
    )
    token.add_argument("--secret", default=os.environ.get("RTC_SECRET"),
                       help="the server's secret [RTC_SECRET]")
    token.add_argument("--scope", choices=[scope.value for scope in Scope],
                       help="an API token of this scope instead of a room token")
    token.add_argument("--blog-id", type=_id)
    token.add_argument("--post-id", type=_post_id, default=argparse.SUPPRESS,
                       help="a post id, or '*' for every post")
    token.add_argument("--user-id", type=_id)
    token.add_argument("--name", help="display name carried in the token")
    token.add_argument("--ttl", type=_ttl,
                       help="lifetime: seconds, or with a unit: 90s, 15m, 1h, 7d "
                       "(default: 1h for a room token, 15m with --scope)")
    return parser


def _token(args: argparse.Namespace) -> int:
    if not args.secret:
        print("rtc token: --secret (or RTC_SECRET) is required", file=sys.stderr)
        return 2
    given = [args.blog_id is not None, "post_id" in vars(args), args.user_id is not None]
    if args.scope is not None and (any(given) or args.name):
        print("rtc token: --scope takes no --blog-id, --post-id, --user-id or --name",
              file=sys.stderr)
        return 2
    if args.scope is None and not all(given):
        print("rtc token: --blog-id, --post-id and --user-id are required (or --scope)",
              file=sys.stderr)
        return 2
    ttl = args.ttl if args.ttl is not None else 900.0 if args.scope else 3600.0
    if ttl <= 0:
        print("rtc token: --ttl must be longer than 0", file=sys.stderr)
        return 2
    if args.scope is not None:
        print(issue_scoped(args.secret, scope=args.scope, ttl_seconds=ttl))
        return 0
    print(
        issue(
            args.secret, blog_id=args.blog_id, post_id=args.post_id, user_id=args.user_id,
            ttl_seconds=ttl, name=args.name,
        )
    )
    return 0


def _config(args: argparse.Namespace, environ: dict[str, str]) -> ServerConfig:
    """Flags given on the command line win over RTC_* variables, which win over defaults."""
    values = ServerConfig.from_env(environ)
    given = {name: value for name, value in vars(args).items() if name != "command"}
    for name in ("recorders", "allowed_origins", "forwarded_allow_ips"):
        if name in given:
            given[name] = tuple(given[name])
    secret_file = given.pop("secret_file", None) or environ.get("RTC_SECRET_FILE") or None
    values.update(given)
    if secret_file is not None:
        if "secret" in given or "secret" in values:
            raise ConfigError("give the secret once: --secret/RTC_SECRET or --secret-file")
        values["secret"] = read_secret(Path(secret_file))
    return ServerConfig(**values)  # type: ignore[arg-type]


def read_secret(path: Path) -> str:
    """The secret in a file's first line (so it never shows in `ps` or the environment)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"--secret-file {path}: {error}") from None
    secret = lines[0].strip() if lines else ""
    if not secret:
        raise ConfigError(f"--secret-file {path}: the first line is empty")
    return secret


async def _serve(config: ServerConfig, link: WorkerLink | None = None) -> None:
    # The signals are taken for the server's whole life, so that a second one (a terminal
    # or systemd signals every process of a `--workers` group, and the supervisor forwards
    # it too) cannot cut the drain short.
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        listening = link.listening_socket() if link is not None else None
        async with RtcServer(config, listening=listening) as server:
            banner: list[str] = []
            port = server.port
            base = f"{config.host}:{port}"
            banner.append(f"rtc listening on http://{base}")
            banner.append(f"  WebSocket: ws://{base}/rooms/{{blog_id}}/{{post_id}}")
            banner.append(f"  Demo:      http://{base}/")
            banner.append(f"  Stats:     http://{base}/stats  http://{base}/api/stats  "
                          f"http://{base}/metrics")
            for recorder in server.recorders:
                banner.append(f"  Events:    {recorder.description}")
            if server.node_id is not None:
                banner.append(
                    f"  Cluster:   node {server.node_id} on {server.cluster_description}"
                )
            if config.secret is None:
                banner.append(
                    "  WARNING: no --secret: the server runs OPEN. Anyone who can reach it can "
                    "join any room as any user. Set RTC_SECRET for production."
                )
            exposures = config.exposures() if config.listens_beyond_loopback else []
            if exposures:
                banner.append(
                    f"  WARNING: listening on {config.host}, reachable from other machines, with:"
                )
                banner.extend(f"    - {exposure}" for exposure in exposures)
                banner.append("    See the README's production profile.")
            if link is None:
                print("\n".join(banner), flush=True)
            else:  # the supervisor prints one banner for the group
                link.ready(banner, node_id=server.node_id)
            reason = await wait_for_stop(signals, link)
            print(f"rtc: {reason}, shutting down", flush=True)


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "token":
        return _token(args)
    try:
        config = _config(args, dict(os.environ))
    except (ConfigError, ValueError, TypeError) as error:
        print(f"rtc: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    refusal = config.cluster_refusal()
    if refusal is not None:
        print(f"rtc: {refusal}", file=sys.stderr)
        return 2
    if config.streams is not None:
        try:
            load_streams(config.streams)  # fail fast, before anything listens
        except (StreamConfigError, OSError) as error:
            print(f"rtc: {error}", file=sys.stderr)
            return 2
    try:
        link = WorkerLink.from_environ(os.environ)
    except ConfigError as error:
        print(f"rtc: {error}", file=sys.stderr)
        return 2
    if config.workers > 1:
        given = list(argv) if argv is not None else sys.argv[1:]
        return supervise(config, given, environ=dict(os.environ))
    # uvloop's libuv I/O cuts the server's CPU by about a fifth under fan-out load
    # (bench/bench_servers.py, room50); asyncio's own loop is the fallback.
    try:
        anyio.run(_serve, config, link, backend_options={"use_uvloop": _has_uvloop()})
    except ValueError as error:  # e.g. a malformed --recorder URL, found as it is opened
        print(f"rtc: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # e.g. the port is taken, the data folder is not writable
        print(f"rtc: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
