"""The URL layout: which path is a room, the event feed, an API endpoint or a demo file.

No I/O here. Anything else is a 404 and ids that are not positive integers a 400, answered
before any WebSocket upgrade.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

from rtc.room import RoomKey

__all__ = ["ApiRoute", "FeedRoute", "HttpError", "RoomRoute", "Route", "StaticRoute", "route"]

_ID = re.compile(r"[1-9][0-9]{0,17}")


class HttpError(Exception):
    """A request refused before any upgrade, with its HTTP status and a one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class RoomRoute:
    """`/rooms/{blog_id}/{post_id}`: a WebSocket to a post's room."""

    key: RoomKey
    post_type: str | None = None
    token: str | None = None


@dataclass(frozen=True, slots=True)
class FeedRoute:
    """`/events?blog_id=&post_id=`: a WebSocket streaming the room's recorded events."""

    key: RoomKey


@dataclass(frozen=True, slots=True)
class ApiRoute:
    """A JSON or text endpoint: `healthz`, `metrics`, `rooms`, `room`, `kick` (POST),
    `events` (POST), `streams`, `capture`, `capture_blog` (PUT/POST), `session`."""

    name: str
    key: RoomKey | None = None
    blog_id: int | None = None
    session_id: int | None = None


@dataclass(frozen=True, slots=True)
class StaticRoute:
    """A file of the demo page, relative to the demo folder."""

    path: str


Route = RoomRoute | FeedRoute | ApiRoute | StaticRoute


def _room_key(blog: str, post: str) -> RoomKey:
    if not (_ID.fullmatch(blog) and _ID.fullmatch(post)):
        raise HttpError(400, "blog_id and post_id must be positive integers")
    return RoomKey(int(blog), int(post))


def _positive(text: str) -> int:
    if not _ID.fullmatch(text):
        raise HttpError(400, "ids must be positive integers")
    return int(text)


def _session_id(text: str) -> int:
    # A Yjs clientID is a uint32; 0 is possible in principle.
    if not (text.isdigit() and len(text) <= 10):
        raise HttpError(400, "session_id must be a non-negative integer")
    return int(text)


def _single(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[-1] if values else None


def route(target: str) -> Route:
    """Map a request target (path and query) to a route.

    Raises:
        HttpError: 404 for an unknown path, 400 for malformed ids.
    """
    parts = urlsplit(target)
    path = unquote(parts.path)
    query = parse_qs(parts.query)
    segments = [segment for segment in path.split("/") if segment]
    match segments:
        case ["rooms", blog, post]:
            post_type = _single(query, "post_type")
            return RoomRoute(_room_key(blog, post), post_type or None, _single(query, "token"))
        case ["events"]:
            blog_id, post_id = _single(query, "blog_id"), _single(query, "post_id")
            return FeedRoute(_room_key(blog_id or "", post_id or ""))
        case ["healthz"]:
            return ApiRoute("healthz")
        case ["metrics"]:
            return ApiRoute("metrics")
        case ["api", "rooms"]:
            return ApiRoute("rooms")
        case ["api", "rooms", blog, post]:
            return ApiRoute("room", _room_key(blog, post))
        case ["api", "rooms", blog, post, "kick"]:
            return ApiRoute("kick", _room_key(blog, post))
        case ["api", "events"]:
            return ApiRoute("events")
        case ["api", "streams"]:
            blog_id = _single(query, "blog_id")
            return ApiRoute("streams", blog_id=_positive(blog_id) if blog_id else None)
        case ["api", "capture"]:
            return ApiRoute("capture")
        case ["api", "capture", blog]:
            return ApiRoute("capture_blog", blog_id=_positive(blog))
        case ["api", "stats"]:
            return ApiRoute("stats")
        case ["api", "stats", "live"]:
            return ApiRoute("stats_live")
        case ["stats"]:
            return StaticRoute("stats.html")
        case ["api", "sessions", blog, post, session]:
            return ApiRoute("session", _room_key(blog, post), session_id=_session_id(session))
        case ["sessions", blog, post, session]:
            _room_key(blog, post), _session_id(session)
            return StaticRoute("session.html")
        case [] | ["demo"]:
            return StaticRoute("index.html")
        case ["demo", *rest] if all(_safe(segment) for segment in rest):
            return StaticRoute("/".join(rest))
    raise HttpError(404, f"no such path: {path}")


def _safe(segment: str) -> bool:
    # Never serve dot-files, parent references or installed packages from the demo folder.
    return not segment.startswith(".") and segment != "node_modules" and "\\" not in segment
