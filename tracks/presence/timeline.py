"""One session's story from the event store: its connections, refusals, errors and company.

Synchronous `sqlite3` (run it in a thread from async code); no asyncio here. A session is
`(blog_id, post_id, session_id)`: its events come from the indexed columns, server and
client events alike (client events carry `origin: "client"`).
"""

from __future__ import annotations

from pathlib import Path

from tracks.event import Event, JSONValue
from tracks.presence.sqlite_schema import SELECT_EVENT, connect, event_from_row

__all__ = ["session_timeline"]


def _room_events(
    path: Path, blog_id: int, post_id: int, session_id: int
) -> tuple[list[Event], list[Event]]:
    connection = connect(path, readonly=True)
    try:
        own = [
            event_from_row(*row)
            for row in connection.execute(
                f"SELECT {SELECT_EVENT} FROM events"
                " WHERE blog_id = ? AND post_id = ? AND session_id = ? ORDER BY ts, id",
                (blog_id, post_id, session_id),
            )
        ]
        if not own:
            return [], []
        first, last = own[0].ts, own[-1].ts
        room = [
            event_from_row(*row)
            for row in connection.execute(
                f"SELECT {SELECT_EVENT} FROM events"
                " WHERE blog_id = ? AND post_id = ? AND ts BETWEEN ? AND ?"
                " AND name IN ('jetpack_rtc_join', 'jetpack_rtc_leave') ORDER BY ts, id",
                (blog_id, post_id, first, last),
            )
        ]
        return own, room
    finally:
        connection.close()


def session_timeline(
    path: str | Path, blog_id: int, post_id: int, session_id: int
) -> dict[str, JSONValue] | None:
    """The session's timeline as JSON, or None when the store has no event of it."""
    own, room = _room_events(Path(path), blog_id, post_id, session_id)
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
