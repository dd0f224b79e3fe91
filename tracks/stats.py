"""Report queries over the SQLite event store. Synchronous `sqlite3`; no asyncio, no printing.

Each figure is one small query function taking a connection and a `Scope`,
so a richer stats layer can add figures (per-day series, durations, top posts)
beside these without touching them. `report()` bundles the figures the CLI shows.

Event kinds are recognised by name suffix (``*_blocked``, ``*_connection_error``),
so the queries do not depend on the server's prefix. A connection error's code
is its ``error_code`` property (the server's), else ``close_code``, else ``code``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from tracks import schema
from tracks.event import JSONValue
from tracks.store import locate, read_events

__all__ = [
    "Report",
    "Scope",
    "blocked",
    "connection_errors_by_code",
    "events_by_name",
    "open_store",
    "report",
    "unique_posts",
    "unique_sessions",
    "unique_users",
]

BLOCKED_SUFFIX = "_blocked"
CONNECTION_ERROR_SUFFIX = "_connection_error"


@dataclass(frozen=True, slots=True, kw_only=True)
class Scope:
    """Which events a figure counts: one blog, one post, a time window (ms since epoch)."""

    blog_id: int | None = None
    post_id: int | None = None
    since_ms: int | None = None
    until_ms: int | None = None

    def where(self) -> tuple[str, list[object]]:
        """A SQL ``WHERE`` clause (always present, so callers can append ``AND …``)."""
        clauses, params = ["1"], list[object]()
        for column, value, operator in (
            ("blog_id", self.blog_id, "="),
            ("post_id", self.post_id, "="),
            ("ts", self.since_ms, ">="),
            ("ts", self.until_ms, "<"),
        ):
            if value is not None:
                clauses.append(f"{column} {operator} ?")
                params.append(value)
        return " WHERE " + " AND ".join(clauses), params


def _scalar(connection: sqlite3.Connection, sql: str, params: list[object]) -> int:
    return int(connection.execute(sql, params).fetchone()[0] or 0)


def _suffix_like(suffix: str) -> str:
    return "%" + suffix.replace("_", "\\_")


def total_events(connection: sqlite3.Connection, scope: Scope) -> int:
    where, params = scope.where()
    return _scalar(connection, f"SELECT COUNT(*) FROM events{where}", params)


def events_by_name(connection: sqlite3.Connection, scope: Scope) -> dict[str, int]:
    """Event count per name, most frequent first."""
    where, params = scope.where()
    rows = connection.execute(
        f"SELECT name, COUNT(*) AS n FROM events{where} GROUP BY name ORDER BY n DESC, name",
        params,
    )
    return {name: count for name, count in rows}


def unique_sessions(connection: sqlite3.Connection, scope: Scope) -> int:
    """Distinct ``(blog_id, post_id, session_id)``: a session id is unique only within a room."""
    where, params = scope.where()
    return _scalar(
        connection,
        "SELECT COUNT(*) FROM (SELECT DISTINCT blog_id, post_id, session_id FROM events"
        f"{where} AND session_id IS NOT NULL)",
        params,
    )


def unique_users(connection: sqlite3.Connection, scope: Scope) -> int:
    """Distinct ``wp_user_id`` (events without one are not counted)."""
    where, params = scope.where()
    return _scalar(
        connection,
        f"SELECT COUNT(DISTINCT wp_user_id) FROM events{where} AND wp_user_id IS NOT NULL",
        params,
    )


def unique_posts(connection: sqlite3.Connection, scope: Scope) -> int:
    """Distinct ``(blog_id, post_id)``."""
    where, params = scope.where()
    return _scalar(
        connection,
        "SELECT COUNT(*) FROM (SELECT DISTINCT blog_id, post_id FROM events"
        f"{where} AND blog_id IS NOT NULL AND post_id IS NOT NULL)",
        params,
    )


def blocked(connection: sqlite3.Connection, scope: Scope) -> int:
    """How many ``*_blocked`` events."""
    where, params = scope.where()
    return _scalar(
        connection,
        f"SELECT COUNT(*) FROM events{where} AND name LIKE ? ESCAPE '\\'",
        [*params, _suffix_like(BLOCKED_SUFFIX)],
    )


def connection_errors_by_code(connection: sqlite3.Connection, scope: Scope) -> dict[str, int]:
    """``*_connection_error`` events per error code (``"unknown"`` without one)."""
    where, params = scope.where()
    rows = connection.execute(
        "SELECT COALESCE(CAST(COALESCE(json_extract(props, '$.error_code'),"
        " json_extract(props, '$.close_code'), json_extract(props, '$.code')) AS TEXT),"
        " 'unknown') AS code,"
        f" COUNT(*) AS n FROM events{where} AND name LIKE ? ESCAPE '\\'"
        " GROUP BY code ORDER BY n DESC, code",
        [*params, _suffix_like(CONNECTION_ERROR_SUFFIX)],
    )
    return {code: count for code, count in rows}


@dataclass(frozen=True, slots=True, kw_only=True)
class Report:
    """The figures `tracks report` prints."""

    scope: Scope
    events: int
    events_by_name: dict[str, int]
    unique_sessions: int
    unique_users: int
    unique_posts: int
    blocked: int
    connection_errors_by_code: dict[str, int]

    def to_json(self) -> dict[str, JSONValue]:
        data: dict[str, JSONValue] = asdict(self)
        return data


def report(connection: sqlite3.Connection, scope: Scope | None = None) -> Report:
    """Every figure of `Report` for ``scope`` (all events by default)."""
    scope = scope or Scope()
    return Report(
        scope=scope,
        events=total_events(connection, scope),
        events_by_name=events_by_name(connection, scope),
        unique_sessions=unique_sessions(connection, scope),
        unique_users=unique_users(connection, scope),
        unique_posts=unique_posts(connection, scope),
        blocked=blocked(connection, scope),
        connection_errors_by_code=connection_errors_by_code(connection, scope),
    )


@contextmanager
def open_store(source: str | Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection to a store; a JSONL store is loaded into an in-memory copy.

    Raises:
        FileNotFoundError: the store does not exist.
    """
    kind, path = locate(source)
    if not path.exists():
        raise FileNotFoundError(f"no event store at {path}")
    if kind == "sqlite":
        connection = schema.connect(path, readonly=True)
    else:
        connection = schema.connect(":memory:")
        schema.insert_events(connection, read_events(path))
    try:
        yield connection
    finally:
        connection.close()
