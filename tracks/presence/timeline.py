"""One session's story from the event store: its connections, refusals, errors and company.

Blocking I/O (run it in a thread from async code); no asyncio here. A session is
`(blog_id, post_id, session_id)`: its events come from the indexed columns, server and
client events alike (client events carry `origin: "client"`). The store is a SQLite file or
a PostgreSQL database; with ``archive=DIR`` the archived days (`tracks.presence.archive`)
count too, each event once.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tracks.event import Event, JSONValue
from tracks.presence import postgresql_schema
from tracks.presence import sqlite_schema as schema
from tracks.presence.archive import read_archive
from tracks.presence.postgresql_reading import is_postgresql_url

__all__ = ["session_timeline"]

_COMPANY = ("jetpack_rtc_join", "jetpack_rtc_leave")


def _sqlite_events(
    path: Path, blog_id: int, post_id: int, session_id: int
) -> tuple[list[Event], list[Event]]:
    connection = schema.connect(path, readonly=True)
    try:
        own = [
            schema.event_from_row(*row)
            for row in connection.execute(
                f"SELECT {schema.SELECT_EVENT} FROM events"
                " WHERE blog_id = ? AND post_id = ? AND session_id = ? ORDER BY ts, id",
                (blog_id, post_id, session_id),
            )
        ]
        if not own:
            return [], []
        room = [
            schema.event_from_row(*row)
            for row in connection.execute(
                f"SELECT {schema.SELECT_EVENT} FROM events"
                " WHERE blog_id = ? AND post_id = ? AND ts BETWEEN ? AND ?"
                " AND name IN (?, ?) ORDER BY ts, id",
                (blog_id, post_id, own[0].ts, own[-1].ts, *_COMPANY),
            )
        ]
        return own, room
    finally:
        connection.close()


def _postgresql_events(
    url: str, blog_id: int, post_id: int, session_id: int
) -> tuple[list[Event], list[Event]]:
    psycopg = postgresql_schema.import_psycopg()
    target = postgresql_schema.parse_url(url)
    select = f"SELECT {postgresql_schema.SELECT_EVENT} FROM events"
    with psycopg.connect(target.conninfo, autocommit=True, connect_timeout=10) as connection:
        postgresql_schema.schema_version(connection, target.schema)
        # The column holds a session id's text, an int's and a str's alike: props tells.
        own = [
            event
            for row in connection.execute(
                f"{select} WHERE blog_id = %s AND post_id = %s AND session_id = %s"
                " ORDER BY ts, id",
                (blog_id, post_id, str(session_id)),
            )
            if (event := postgresql_schema.event_from_row(*row)).props.get("session_id")
            == session_id
        ]
        if not own:
            return [], []
        room = [
            postgresql_schema.event_from_row(*row)
            for row in connection.execute(
                f"{select} WHERE blog_id = %s AND post_id = %s AND ts BETWEEN %s AND %s"
                " AND name IN (%s, %s) ORDER BY ts, id",
                (blog_id, post_id, own[0].ts, own[-1].ts, *_COMPANY),
            )
        ]
    return own, room


def _archived_events(
    archive: str | Path, blog_id: int, post_id: int, session_id: int
) -> tuple[list[Event], list[Event]]:
    """The session's archived events, and the post's archived joins and leaves."""
    own: list[Event] = []
    room: list[Event] = []
    for event in read_archive(archive):
        props = event.props
        if props.get("blog_id") != blog_id or props.get("post_id") != post_id:
            continue
        if props.get("session_id") == session_id:
            own.append(event)
        if event.name in _COMPANY:
            room.append(event)
    return own, room


def _merged(*parts: Iterable[Event]) -> list[Event]:
    """Events of several sources, each ``event_id`` once, in ``ts`` order (stable)."""
    seen: dict[str, Event] = {}
    for part in parts:
        for event in part:
            seen.setdefault(event.event_id, event)
    return sorted(seen.values(), key=lambda event: event.ts)


def _session_events(
    source: str | Path, blog_id: int, post_id: int, session_id: int, archive: str | Path | None
) -> tuple[list[Event], list[Event]]:
    if is_postgresql_url(source):
        own, room = _postgresql_events(str(source), blog_id, post_id, session_id)
    else:
        own, room = _sqlite_events(Path(source), blog_id, post_id, session_id)
    if archive is None:
        return own, room
    archived_own, archived_room = _archived_events(archive, blog_id, post_id, session_id)
    # Archived days come first: the stored ones are newer (or the same, counted once).
    own = _merged(archived_own, own)
    if not own:
        return [], []
    first, last = own[0].ts, own[-1].ts
    room = _merged(archived_room, room)
    return own, [event for event in room if first <= event.ts <= last]


def session_timeline(
    source: str | Path,
    blog_id: int,
    post_id: int,
    session_id: int,
    *,
    archive: str | Path | None = None,
) -> dict[str, JSONValue] | None:
    """The session's timeline as JSON, or None when the store has no event of it.

    Args:
        source: a SQLite store's path or a ``postgresql://`` URL.
        archive: also read the days archived in this directory (each event once).

    Raises:
        SchemaError: a PostgreSQL database without an event store.
    """
    own, room = _session_events(source, blog_id, post_id, session_id, archive)
    if not own:
        return None
    connections: list[JSONValue] = []
    errors: list[JSONValue] = []
    blocked = False
    user: JSONValue = None
    open_join: Event | None = None
    for event in own:
        kind = event.name.rsplit("_rtc_", 1)[-1]
        user = user if user is not None else event.props.get("wp_user_id")
        if kind == "join":
            open_join = event
        elif kind == "leave":
            joined_at = open_join.ts if open_join is not None else None
            connections.append({
                "joined_at": joined_at,
                "left_at": event.ts,
                "duration_ms": event.props.get("duration_ms"),
                "clean": event.props.get("clean"),
                "updates": event.props.get("updates"),
                "reconnect": bool(open_join and open_join.props.get("reconnect")),
            })
            open_join = None
        elif kind == "blocked":
            blocked = True
        elif kind == "connection_error":
            errors.append({
                "ts": event.ts,
                "origin": event.props.get("origin", "server"),
                "error_code": event.props.get("error_code"),
                "close_code": event.props.get("close_code"),
            })
    if open_join is not None:
        connections.append({
            "joined_at": open_join.ts, "left_at": None, "duration_ms": None, "clean": None,
            "updates": None, "reconnect": bool(open_join.props.get("reconnect")),
        })
    company: list[JSONValue] = []
    for event in room:
        entry: dict[str, JSONValue] = {
            "ts": event.ts,
            "event": event.name.rsplit("_rtc_", 1)[-1],
            "session_id": event.props.get("session_id"),
            "wp_user_id": event.props.get("wp_user_id"),
        }
        if "contributors" in event.props:
            entry["contributors"] = event.props["contributors"]
            entry["session_count"] = event.props.get("session_count")
        company.append(entry)
    durations = [c["duration_ms"] for c in connections if isinstance(c, dict)
                 and isinstance(c.get("duration_ms"), int)]
    return {
        "blog_id": blog_id,
        "post_id": post_id,
        "session_id": session_id,
        "wp_user_id": user,
        "first_ts": own[0].ts,
        "last_ts": own[-1].ts,
        "total_duration_ms": sum(durations),
        "connections": connections,
        "reconnects": sum(1 for c in connections if isinstance(c, dict) and c.get("reconnect")),
        "blocked": blocked,
        "errors": errors,
        "company": company,
        "events": [event.to_json() for event in own],
    }
