"""The URL layout: each path is one typed route, and each route names the methods it takes.

No I/O here. Anything else is a 404 and ids that are not positive integers a 400, answered
before any WebSocket upgrade.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from rtc.http.errors import HttpError
from rtc.http.request import HttpRequest
from rtc.ids import RoomKey, id_from_text

__all__ = [
    "CaptureBlog",
    "CaptureList",
    "FeedRoute",
    "Health",
    "Ingest",
    "Kick",
    "LiveStats",
    "MetricsText",
    "OpenApiDocument",
    "Page",
    "RoomList",
    "RoomRoute",
    "Roster",
    "Route",
    "SessionTimeline",
    "Stats",
    "Streams",
    "allowed",
    "route",
]

_GET: tuple[str, ...] = ("GET",)


@dataclass(frozen=True, slots=True)
class RoomRoute:
    """`/rooms/{blog_id}/{post_id}`: a WebSocket to a post's room."""

    methods: ClassVar[tuple[str, ...]] = _GET
    key: RoomKey
    post_type: str | None = None
    token: str | None = None


@dataclass(frozen=True, slots=True)
class FeedRoute:
    """`/events?blog_id=&post_id=[&token=]`: a WebSocket streaming the room's recorded events."""

    methods: ClassVar[tuple[str, ...]] = _GET
    key: RoomKey
    token: str | None = None


@dataclass(frozen=True, slots=True)
class Health:
    """`GET /healthz`."""

    methods: ClassVar[tuple[str, ...]] = _GET


@dataclass(frozen=True, slots=True)
class MetricsText:
    """`GET /metrics`: Prometheus text."""

    methods: ClassVar[tuple[str, ...]] = _GET


@dataclass(frozen=True, slots=True)
class OpenApiDocument:
    """`GET /openapi.json`: the OpenAPI 3.1 description of this API (`rtc.http.openapi`)."""

    methods: ClassVar[tuple[str, ...]] = _GET


@dataclass(frozen=True, slots=True)
class RoomList:
    """`GET /api/rooms`."""

    methods: ClassVar[tuple[str, ...]] = _GET


@dataclass(frozen=True, slots=True)
class Roster:
    """`GET /api/rooms/{blog_id}/{post_id}`: the live roster."""

    methods: ClassVar[tuple[str, ...]] = _GET
    key: RoomKey


@dataclass(frozen=True, slots=True)
class Kick:
    """`POST /api/rooms/{blog_id}/{post_id}/kick` (admin)."""

    methods: ClassVar[tuple[str, ...]] = ("POST",)
    key: RoomKey


@dataclass(frozen=True, slots=True)
class Ingest:
    """`POST /api/events`: client events from browsers (and its CORS preflight)."""

    methods: ClassVar[tuple[str, ...]] = ("POST", "OPTIONS")


@dataclass(frozen=True, slots=True)
class Streams:
    """`GET /api/streams[?blog_id=]`: what browsers need to sample and send."""

    methods: ClassVar[tuple[str, ...]] = _GET
    blog_id: int | None = None


@dataclass(frozen=True, slots=True)
class CaptureList:
    """`GET /api/capture` (admin)."""

    methods: ClassVar[tuple[str, ...]] = _GET


@dataclass(frozen=True, slots=True)
class CaptureBlog:
    """`PUT|POST /api/capture/{blog_id}` (admin)."""

    methods: ClassVar[tuple[str, ...]] = ("PUT", "POST")
    blog_id: int


@dataclass(frozen=True, slots=True)
class Stats:
    """`GET /api/stats?blog_id=&post_id=&since=&until=`."""

    methods: ClassVar[tuple[str, ...]] = _GET


@dataclass(frozen=True, slots=True)
class LiveStats:
    """`GET /api/stats/live`: active now."""

    methods: ClassVar[tuple[str, ...]] = _GET


@dataclass(frozen=True, slots=True)
class SessionTimeline:
    """`GET /api/sessions/{blog_id}/{post_id}/{session_id}`."""

    methods: ClassVar[tuple[str, ...]] = _GET
    key: RoomKey
    session_id: int


@dataclass(frozen=True, slots=True)
class Page:
    """A file of the demo folder (the demo, stats and session pages and their assets)."""

    methods: ClassVar[tuple[str, ...]] = _GET
    path: str


Route = (
    RoomRoute | FeedRoute | Health | MetricsText | OpenApiDocument | RoomList | Roster | Kick
    | Ingest | Streams | CaptureList | CaptureBlog | Stats | LiveStats | SessionTimeline | Page
)


def _room_key(blog: str | None, post: str | None) -> RoomKey:
    blog_id, post_id = id_from_text(blog or ""), id_from_text(post or "")
    if blog_id is None or post_id is None:
        raise HttpError(400, "blog_id and post_id must be positive integers")
    return RoomKey(blog_id, post_id)


def _blog_id(text: str) -> int:
    blog_id = id_from_text(text)
    if blog_id is None:
        raise HttpError(400, "ids must be positive integers")
    return blog_id


def _session_id(text: str) -> int:
    # A Yjs clientID is a uint32; 0 is possible in principle.
    if not (text.isascii() and text.isdigit() and len(text) <= 10 and int(text) < 2**32):
        raise HttpError(400, "session_id must be an integer from 0 to 2**32 - 1")
    return int(text)


def route(target: str) -> Route:
    """Map a request target (path and query) to a route.

    Raises:
        HttpError: 404 for an unknown path, 400 for malformed ids.
    """
    request = HttpRequest(method="GET", target=target)
    path = request.path
    match [segment for segment in path.split("/") if segment]:
        case ["rooms", blog, post]:
            return RoomRoute(_room_key(blog, post), request.query("post_type"),
                             request.query("token"))
        case ["events"]:
            return FeedRoute(_room_key(request.query("blog_id"), request.query("post_id")),
                             request.query("token"))
        case ["healthz"]:
            return Health()
        case ["metrics"]:
            return MetricsText()
        case ["openapi.json"]:
            return OpenApiDocument()
        case ["api", "rooms"]:
            return RoomList()
        case ["api", "rooms", blog, post]:
            return Roster(_room_key(blog, post))
        case ["api", "rooms", blog, post, "kick"]:
            return Kick(_room_key(blog, post))
        case ["api", "events"]:
            return Ingest()
        case ["api", "streams"]:
            blog_id = request.query("blog_id")
            return Streams(_blog_id(blog_id) if blog_id is not None else None)
        case ["api", "capture"]:
            return CaptureList()
        case ["api", "capture", blog]:
            return CaptureBlog(_blog_id(blog))
        case ["api", "stats"]:
            return Stats()
        case ["api", "stats", "live"]:
            return LiveStats()
        case ["api", "sessions", blog, post, session]:
            return SessionTimeline(_room_key(blog, post), _session_id(session))
        case ["stats"]:
            return Page("stats.html")
        case ["sessions", blog, post, session]:
            _room_key(blog, post), _session_id(session)
            return Page("session.html")
        case [] | ["demo"]:
            return Page("index.html")
        case ["demo", *rest] if all(_safe(segment) for segment in rest):
            return Page("/".join(rest))
    raise HttpError(404, f"no such path: {path}")


def allowed(target: Route, method: str) -> None:
    """Refuse a method the route does not take.

    Raises:
        HttpError: 405, with the `Allow` header.
    """
    if method not in target.methods:
        allow = ", ".join(target.methods)
        raise HttpError(405, f"{method} is not allowed here; use {allow}",
                        headers={"Allow": allow})


# Longer names are no file of ours (file systems refuse them: ENAMETOOLONG), in UTF-8 bytes.
MAX_NAME = 255


def _safe(segment: str) -> bool:
    # Never serve dot-files, parent references or installed packages from the demo folder;
    # nor names no file system holds (a NUL byte, a control character, 256+ bytes).
    return (
        not segment.startswith(".")
        and segment != "node_modules"
        and "\\" not in segment
        and len(segment.encode()) <= MAX_NAME
        and segment.isprintable()
    )
