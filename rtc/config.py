"""Server configuration: one frozen dataclass, and its reading from `RTC_*` environment variables.

No I/O here beyond reading the mapping it is given.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

from rtc.forwarded import TrustedProxies
from tracks.presence.figures import DAY_MS
from tracks.presence.retention import check_retention
from tracks.urls import recorder_kind

__all__ = ["ConfigError", "ServerConfig"]


class ConfigError(ValueError):
    """A configuration value is missing or malformed; the message names it."""


def _default_demo_dir() -> Path:
    # A wheel carries the built pages in rtc/pages/ (setup.py); a source checkout serves demo/.
    package = Path(__file__).resolve().parent
    pages = package / "pages"
    return pages if (pages / "index.html").is_file() else package.parent / "demo"


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """Everything `rtc serve` can be told. Defaults are the documented ones (README, --help).

    Attributes:
        host: interface to listen on.
        port: TCP port; 0 picks a free one (read it back from the server).
        data_dir: where documents (`documents.sqlite`) and the default event store live.
        recorders: recorder URLs (see `tracks.open_recorder`); empty means the SQLite default.
        max_contributors: distinct users per room, 0 = unlimited.
        max_connections_per_room: sessions per room, 0 = unlimited.
        event_prefix: prefix of every event name.
        max_message_size: largest accepted frame in bytes (1009 beyond).
        ping_interval: seconds between WebSocket pings.
        ping_timeout: seconds a peer has to answer a ping before it is closed.
        announce_timeout: seconds a new connection has to send the awareness update that
            names its session.
        room_grace: seconds an empty room stays loaded before it is unloaded.
        outbox_limit: bytes that may wait in one peer's write buffer; a slower peer is closed
            with 1013 so it cannot hold anyone else back.
        store_flush_interval: seconds between batched writes of document updates.
        demo_dir: folder the demo page is served from: the installed package's pages
            (`rtc/pages/`, in a wheel), else the source checkout's `demo/`.
        log_level: logging level name.
        secret: HS256 secret for room tokens; None runs the server open (no tokens).
        allowed_origins: Origins a browser handshake may come from; empty allows any.
        max_messages_per_second: a connection's sustained message allowance (1008 beyond).
        message_burst: messages a connection may send at once.
        max_connections_per_ip: open connections from one client address (HTTP 429 beyond),
            0 = unlimited.
        max_rooms: rooms loaded at once (4503 beyond), 0 = unlimited.
        max_connections: open connections in total (HTTP 503 beyond), 0 = unlimited.
        ingest_window: seconds of the dedupe bucket for client events sent without an id.
        ingest_rate: client event batches per second one address may post (429 beyond).
        ingest_burst: batches one address may post at once.
        streams: a stream configuration file (TOML or JSON); None keeps the defaults.
        rollup_interval: seconds between stats rollup runs of the event store, 0 = never.
        retention_days: raw events older than this many days are pruned after each rollup
            (rollups are kept), 0 = keep forever; at least 2 otherwise.
        max_token_ttl: seconds a room or admin token may live from its issue to its expiry;
            longer-lived tokens are refused.
        max_held_bytes: bytes held from one connection before it names its session (beyond:
            closed).
        max_held_total: bytes held from all connections not yet named (beyond: newcomers are
            refused with a retryable close).
        max_document_size: bytes of stored updates a room's document may grow to (beyond:
            the update is refused and its sender closed), 0 = unlimited.
        bytes_per_second: a connection's sustained allowance of bytes sent (beyond: closed
            with 1008 rate-limited, before any other peer is held back).
        byte_burst: bytes a connection may send at once.
        max_stats_days: the longest range `GET /api/stats` answers (a 400 beyond).
        archive_dir: where `tracks archive` moved old events; session timelines read the
            archived days too. None: timelines read the event store only.
        documents: where rooms' documents are stored: ``sqlite:///path`` or
            ``postgresql://…``; empty means ``documents.sqlite`` in the data dir.
        cluster: ``redis://HOST:PORT/DB`` turns cluster mode on (rooms shared with the other
            nodes on that Redis); empty: one node, no Redis.
        node_id: this node's name in the cluster; empty: a unique one per process.
        node_timeout: seconds without a heartbeat after which a node is taken for dead and
            its sessions are reaped by a surviving node.
        workers: worker processes sharing the listening port, each a cluster node (more
            than 1 needs `cluster`).
        forwarded_allow_ips: addresses or CIDRs of proxies trusted to say, in
            X-Forwarded-For or Forwarded, which client they forward; empty trusts none.
    """

    host: str = "127.0.0.1"
    port: int = 1234
    data_dir: Path = Path("rtc-data")
    recorders: tuple[str, ...] = ()
    max_contributors: int = 0
    max_connections_per_room: int = 0
    event_prefix: str = "jetpack_rtc_"
    max_message_size: int = 16 * 1024 * 1024
    ping_interval: float = 20.0
    ping_timeout: float = 20.0
    announce_timeout: float = 10.0
    room_grace: float = 30.0
    outbox_limit: int = 8 * 1024 * 1024
    store_flush_interval: float = 0.1
    demo_dir: Path = field(default_factory=_default_demo_dir)
    log_level: str = "INFO"
    secret: str | None = field(default=None, repr=False)
    allowed_origins: tuple[str, ...] = ()
    max_messages_per_second: float = 300.0
    message_burst: int = 600
    max_connections_per_ip: int = 0
    max_rooms: int = 0
    max_connections: int = 0
    ingest_window: float = 3600.0
    ingest_rate: float = 5.0
    ingest_burst: int = 20
    streams: Path | None = None
    rollup_interval: float = 300.0
    retention_days: int = 0
    max_token_ttl: float = 86400.0
    max_held_bytes: int = 256 * 1024
    max_held_total: int = 64 * 1024 * 1024
    max_document_size: int = 64 * 1024 * 1024
    bytes_per_second: float = 1024 * 1024
    byte_burst: int = 4 * 1024 * 1024
    max_stats_days: int = 400
    documents: str = ""
    archive_dir: Path | None = None
    cluster: str = ""
    node_id: str = ""
    node_timeout: float = 10.0
    workers: int = 1
    forwarded_allow_ips: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in _FLOAT_FIELDS:
            # NaN compares false with everything, so every range check below would pass it.
            if not math.isfinite(getattr(self, name)):
                raise ConfigError(f"{name} must be a finite number, got {getattr(self, name)!r}")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be 0-65535, got {self.port}")
        for name in (
            "max_contributors", "max_connections_per_room", "max_connections_per_ip",
            "max_rooms", "max_connections", "max_document_size",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0 (0 = unlimited)")
        for name in (
            "max_message_size", "outbox_limit", "message_burst", "ingest_burst",
            "max_held_bytes", "max_held_total", "byte_burst", "max_stats_days",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1")
        for name in (
            "ping_interval", "ping_timeout", "announce_timeout", "store_flush_interval",
            "max_messages_per_second", "ingest_window", "ingest_rate", "max_token_ttl",
            "bytes_per_second", "node_timeout",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0")
        if self.rollup_interval < 0:
            raise ConfigError("rollup_interval must be >= 0 (0 = never)")
        if self.retention_days:
            try:
                check_retention(self.retention_days * DAY_MS, name="retention_days")
            except ValueError as error:
                raise ConfigError(f"{error} (or 0: keep forever)") from None
        try:
            TrustedProxies.parse(self.forwarded_allow_ips)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        if self.workers < 1:
            raise ConfigError("workers must be >= 1")
        if self.workers > 1 and not self.cluster:
            raise ConfigError(
                "--workers above 1 needs --cluster: each worker is a node of the cluster"
            )
        if self.room_grace < 0:
            raise ConfigError("room_grace must be >= 0")
        if self.secret is not None and len(self.secret.encode()) < 32:
            # RFC 7518 §3.2: an HS256 key must be at least as long as the hash (32 bytes).
            raise ConfigError("secret must be at least 32 bytes (RFC 7518 §3.2)")

    def cluster_refusal(self) -> str | None:
        """Why this configuration cannot run as a cluster node (one line), or None.

        A node's documents and events must be on a store every node shares: a node-local
        SQLite file would split rooms' histories between nodes.
        """
        if not self.cluster:
            return None
        if not self.cluster.startswith(("redis://", "rediss://", "unix://")):
            return f"--cluster must be a redis:// URL, got {self.cluster!r}"
        if not self.documents.startswith(("postgresql://", "postgres://")):
            return (
                "cluster mode needs the documents on a shared store: "
                "--documents postgresql://… (a node-local SQLite file is not shared)"
            )
        local = [url for url in self.recorder_urls if _recorder_is_local(url)]
        if local:
            return (
                f"cluster mode needs events on a shared store (a PostgreSQL or HTTP "
                f"recorder); {local[0]} is node-local"
            )
        return None

    @property
    def listens_beyond_loopback(self) -> bool:
        """Whether other machines can reach it: any host but 127.0.0.0/8, ::1, localhost."""
        if self.host == "localhost":
            return False
        try:
            return not ipaddress.ip_address(self.host).is_loopback
        except ValueError:  # a host name: assume it resolves beyond this machine
            return True

    def exposures(self) -> list[str]:
        """What is left open that a server reachable from other machines should close: the
        README's production profile, item by item. Empty when nothing is."""
        found = []
        if self.secret is None:
            found.append("no --secret: anyone can join any room as any user and read rosters")
        if not self.allowed_origins:
            found.append("no --allowed-origin: any web page may open WebSockets to this server")
        for name, flag in (
            ("max_connections_per_ip", "--max-connections-per-ip"),
            ("max_connections", "--max-connections"),
            ("max_rooms", "--max-rooms"),
            ("max_connections_per_room", "--max-connections-per-room"),
            ("max_document_size", "--max-document-size"),
        ):
            if not getattr(self, name):
                found.append(f"{flag} is 0 (unlimited)")
        return found

    @property
    def documents_url(self) -> str:
        """Where documents are stored: the configured URL, or SQLite in the data dir."""
        if self.documents:
            return self.documents
        return f"sqlite://{(self.data_dir / 'documents.sqlite').resolve()}"

    @property
    def recorder_urls(self) -> tuple[str, ...]:
        """The recorders to open: the configured ones, or SQLite in the data dir."""
        if self.recorders:
            return self.recorders
        # `sqlite://` + an absolute path gives the `sqlite:///abs/path` form.
        return (f"sqlite://{(self.data_dir / 'events.sqlite').resolve()}",)

    @classmethod
    def from_env(cls, environ: Mapping[str, str], prefix: str = "RTC_") -> dict[str, object]:
        """Read `RTC_<FIELD>` variables into keyword arguments (bad values fail fast).

        `RTC_RECORDER` and `RTC_ALLOWED_ORIGIN` hold one value or several separated by spaces
        or commas.
        """
        values: dict[str, object] = {}
        for spec in fields(cls):
            env_name = prefix + _ENV_NAMES.get(spec.name, spec.name.upper())
            raw = environ.get(env_name)
            if raw is None or raw == "":
                continue
            values[spec.name] = _parse(env_name, spec.name, raw)
        return values


def _recorder_is_local(url: str) -> bool:
    try:
        return recorder_kind(url) in ("sqlite", "jsonl", "memory")
    except (TypeError, ValueError):
        return False  # open_recorder names what is wrong with it at start


_ENV_NAMES = {"recorders": "RECORDER", "allowed_origins": "ALLOWED_ORIGIN"}
_LIST_FIELDS = ("recorders", "allowed_origins", "forwarded_allow_ips")


def _parse(env_name: str, name: str, raw: str) -> object:
    if name in _LIST_FIELDS:
        return tuple(part for part in raw.replace(",", " ").split() if part)
    if name in ("data_dir", "demo_dir", "streams", "archive_dir"):
        return Path(raw)
    if name in ("host", "event_prefix", "log_level", "secret", "documents", "cluster", "node_id"):
        return raw
    kind = float if name in _FLOAT_FIELDS else int
    try:
        return kind(raw)
    except ValueError:
        raise ConfigError(f"{env_name}={raw!r} is not a valid {kind.__name__}") from None


_FLOAT_FIELDS = frozenset(
    {
        "ping_interval", "ping_timeout", "announce_timeout", "room_grace",
        "store_flush_interval", "max_messages_per_second", "ingest_window", "ingest_rate",
        "rollup_interval", "max_token_ttl", "bytes_per_second", "node_timeout",
    }
)
