"""The small HTTP surface served beside the WebSockets: health, metrics, rooms, the demo page."""

from __future__ import annotations

import dataclasses
import json
import mimetypes
from collections.abc import Callable
from pathlib import Path

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Response

from rtc.room import Room, RoomKey

__all__ = ["error_response", "file_response", "json_response", "room_json", "text_response"]


def text_response(
    connection: ServerConnection, status: int, body: bytes, content_type: str
) -> Response:
    response = connection.respond(status, "")
    response = dataclasses.replace(response, body=body)
    for name in ("Content-Type", "Content-Length"):
        del response.headers[name]
    response.headers["Content-Type"] = content_type
    response.headers["Content-Length"] = str(len(body))
    response.headers["Cache-Control"] = "no-store"
    return response


def json_response(connection: ServerConnection, status: int, payload: object) -> Response:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return text_response(connection, status, body, "application/json")


def error_response(connection: ServerConnection, status: int, message: str) -> Response:
    return json_response(connection, status, {"error": message, "status": status})


def file_response(
    connection: ServerConnection, root: Path, relative: str, *, on_missing: Callable[[], None]
) -> Response:
    """Serve a file under `root`, never outside it."""
    base = root.resolve()
    path = (base / relative).resolve()
    if not path.is_relative_to(base) or not path.is_file():
        on_missing()
        return error_response(connection, 404, f"no such file: {relative}")
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    if content_type.startswith("text/") or content_type == "application/javascript":
        content_type += "; charset=utf-8"
    return text_response(connection, 200, path.read_bytes(), content_type)


def room_json(key: RoomKey, room: Room | None) -> dict[str, object]:
    """The live roster of a room (empty when it is not loaded)."""
    contributors = []
    sessions = 0
    if room is not None:
        sessions = room.session_count
        for contributor in room.roster():
            entry: dict[str, object] = {}
            if contributor.user_id is not None:
                entry["id"] = contributor.user_id
            if contributor.name is not None:
                entry["name"] = contributor.name
            entry["sessions"] = [
                {"session_id": s.session_id, "connected_since": s.connected_at_ms}
                for s in contributor.sessions
            ]
            contributors.append(entry)
    return {
        "blog_id": key.blog_id,
        "post_id": key.post_id,
        "loaded": room is not None,
        "session_count": sessions,
        "contributor_count": len(room.contributor_ids()) if room is not None else 0,
        "contributors": contributors,
    }
