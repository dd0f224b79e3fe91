"""The HTTP surface: GET endpoints and pages, other methods (ingest, admin), and the early
refusals of WebSocket handshakes (origin, connection caps).

GETs arrive through websockets' `process_request`; other methods through the plain
connection class (`rtc.connection`). WebSocket upgrades are only admitted here; the server
serves them.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from weakref import WeakKeyDictionary

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from rtc.config import ServerConfig
from rtc.http import responses as http
from rtc.http.analytics import AnalyticsApi
from rtc.http.connection import PlainRequest, PlainResponse
from rtc.http.routes import ApiRoute, FeedRoute, HttpError, RoomRoute, Route, StaticRoute, route
from rtc.http.stats import StatsApi
from rtc.metrics import LiveFigures, Metrics
from rtc.room import RoomKey
from rtc.rooms import RoomRegistry

__all__ = ["ConnectionCounts", "Endpoints", "address_of"]

logger = logging.getLogger(__name__)


def address_of(connection: ServerConnection) -> str:
    address = connection.remote_address
    return str(address[0]) if address else "unknown"


class ConnectionCounts:
    """Open WebSocket connections, in total and by client address (in memory only)."""

    def __init__(self) -> None:
        self.total = 0
        self.by_address: Counter[str] = Counter()

    def opened(self, address: str) -> None:
        self.total += 1
        self.by_address[address] += 1

    def closed(self, address: str) -> None:
        self.total -= 1
        self.by_address[address] -= 1
        if not self.by_address[address]:
            del self.by_address[address]


class Endpoints:
    """Answers HTTP requests and admits WebSocket handshakes.

    Args:
        config: the server configuration.
        metrics: counters.
        rooms: the loaded rooms (rosters).
        analytics: ingest, capture, streams and timelines.
        stats: the stats API and page data.
        live: what is present right now.
        kick: closes a user's sessions in a room; returns how many.
        connections: open connection counts, for the caps.
    """

    def __init__(
        self,
        config: ServerConfig,
        *,
        metrics: Metrics,
        rooms: RoomRegistry,
        analytics: AnalyticsApi,
        stats: StatsApi,
        live: Callable[[], LiveFigures],
        kick: Callable[[RoomKey, int], int],
        connections: ConnectionCounts,
    ) -> None:
        self._config = config
        self._metrics = metrics
        self._rooms = rooms
        self._analytics = analytics
        self._stats = stats
        self._live = live
        self._kick_user = kick
        self._connections = connections
        self._started = time.monotonic()
        # Upgrades admitted by process_request, handed to the server's handler. Weak: a
        # client that vanishes before its handshake completes never reaches the handler,
        # and its entry must not keep the connection alive.
        self.upgrades: WeakKeyDictionary[ServerConnection, RoomRoute | FeedRoute] = (
            WeakKeyDictionary()
        )

    # --- GET, through websockets ---------------------------------------------------------

    def process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | Awaitable[Response] | None:
        try:
            target: Route = route(request.path)
            if isinstance(target, RoomRoute | FeedRoute):
                self._admit_handshake(connection, request)
        except HttpError as error:
            self._metrics.http_errors.labels(str(error.status)).inc()
            path = request.path.split("?")[0]
            logger.info("HTTP %d for %s: %s", error.status, path, error.message)
            return http.error_response(connection, error.status, error.message)
        if isinstance(target, RoomRoute | FeedRoute):
            self.upgrades[connection] = target
            return None
        if isinstance(target, StaticRoute):
            return http.file_response(
                connection,
                self._config.demo_dir,
                target.path,
                on_missing=self._metrics.http_errors.labels("404").inc,
            )
        if target.name in ("stats", "stats_live"):
            return self._stats.respond(connection, target.name, request.path)
        return self._api(connection, target, request.headers)

    def _admit_handshake(self, connection: ServerConnection, request: Request) -> None:
        """Refuse a WebSocket handshake early: foreign Origins, too many connections.

        Raises:
            HttpError: 403, 429 or 503.
        """
        config = self._config
        origin = request.headers.get("Origin")
        if config.allowed_origins:
            if origin is None and config.secret is None:
                # Without tokens, only a browser on an allowed page may connect.
                raise HttpError(403, "an Origin header is required")
            if origin is not None and origin not in config.allowed_origins:
                self._metrics.limit_refusals.labels("origin").inc()
                # Cross-site WebSocket hijacking: another site's page in a user's browser.
                raise HttpError(403, f"origin not allowed: {origin}")
        if config.max_connections and self._connections.total >= config.max_connections:
            self._metrics.limit_refusals.labels("connections").inc()
            raise HttpError(503, "the server is at its connection limit; try again later")
        by_address = self._connections.by_address[address_of(connection)]
        if config.max_connections_per_ip and by_address >= config.max_connections_per_ip:
            self._metrics.limit_refusals.labels("connections_per_ip").inc()
            raise HttpError(429, "too many connections from this address")

    def _api(
        self, connection: ServerConnection, target: ApiRoute, headers: Headers
    ) -> Response | Awaitable[Response]:
        name = target.name
        if name == "metrics":
            return http.text_response(
                connection, 200, self._metrics.render(), "text/plain; version=0.0.4; charset=utf-8"
            )
        if name == "healthz":
            live = self._live()
            return http.json_response(connection, 200, {
                "status": "ok",
                "uptime_s": round(time.monotonic() - self._started, 3),
                "rooms": live.rooms,
                "connections": live.connections,
                "sessions": live.sessions,
            })
        if name == "rooms":
            rooms = [
                {
                    "blog_id": room.key.blog_id,
                    "post_id": room.key.post_id,
                    "session_count": room.session_count,
                    "contributor_count": len(room.contributor_ids()),
                }
                for room in sorted(self._rooms.loaded(), key=lambda room: room.key)
            ]
            return http.json_response(connection, 200, {"rooms": rooms})
        if name in ("kick", "events", "capture_blog"):
            return http.error_response(connection, 405, "use POST")
        if name == "capture":
            try:
                self._analytics.authorise(headers.get("Authorization", ""))
            except HttpError as error:
                return http.error_response(connection, error.status, error.message)
            capture = self._analytics.capture.to_json()
            return http.json_response(connection, 200, {"blogs": capture})
        if name == "streams":
            view = self._analytics.streams_view(target.blog_id)
            return http.json_response(connection, 200, view)
        if name == "session":
            assert target.key is not None
            assert target.session_id is not None
            return self._timeline(connection, target.key, target.session_id)
        assert target.key is not None  # the router gives "room" a key
        return http.json_response(
            connection, 200, http.room_json(target.key, self._rooms.get(target.key))
        )

    async def _timeline(
        self, connection: ServerConnection, key: RoomKey, session_id: int
    ) -> Response:
        status, payload = await self._analytics.timeline(key, session_id)
        return http.json_response(connection, status, payload)

    # --- other methods, through the plain connection class ----------------------------------

    def plain_request(self, request: PlainRequest) -> PlainResponse:
        """Requests other than GET: ingest, capture control and the admin API."""
        try:
            target = route(request.target)
            method = request.method
            name = target.name if isinstance(target, ApiRoute) else None
            analytics = self._analytics
            if name == "events" and method == "OPTIONS":
                return analytics.preflight(request)
            if name == "events" and method == "POST":
                return analytics.ingest(request)
            if name == "capture_blog" and method in ("PUT", "POST"):
                assert isinstance(target, ApiRoute)
                assert target.blog_id is not None
                return analytics.set_capture(request, target.blog_id)
            if name == "kick" and method == "POST":
                assert isinstance(target, ApiRoute)
                return self._kick(target, request)
            raise HttpError(405, f"{method} is not allowed here")
        except HttpError as error:
            self._metrics.http_errors.labels(str(error.status)).inc()
            logger.info("HTTP %d for %s %s: %s", error.status, request.method,
                        request.target.split("?")[0], error.message)
            body = json.dumps({"error": error.message, "status": error.status}).encode()
            return PlainResponse(error.status, body)

    def _kick(self, target: ApiRoute, request: PlainRequest) -> PlainResponse:
        """Close a user's sessions in a room with 4403 `revoked` (permissions changed)."""
        self._analytics.authorise(request.headers.get("authorization", ""))
        try:
            user_id = json.loads(request.body)["user_id"]
        except (ValueError, TypeError, KeyError):
            raise HttpError(400, 'body must be JSON {"user_id": N}') from None
        if not isinstance(user_id, int) or isinstance(user_id, bool) or user_id <= 0:
            raise HttpError(400, "user_id must be a positive integer")
        assert target.key is not None  # the router gives "kick" a key
        closed = self._kick_user(target.key, user_id)
        logger.info("room %s: user %d kicked (%d sessions)", target.key, user_id, closed)
        payload = {"blog_id": target.key.blog_id, "post_id": target.key.post_id,
                   "user_id": user_id, "closed": closed}
        return PlainResponse(200, json.dumps(payload).encode())
