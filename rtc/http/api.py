"""The HTTP API: one dispatch for every route, one error shape, who may read what, and the
early refusals of WebSocket handshakes (origin, connection caps, the feed's token).

GETs arrive through websockets' `process_request`, other methods through the plain
connection class (`rtc.http.connection`); both become an `HttpRequest` and take the same
way from here. WebSocket upgrades are only admitted here; the server serves them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING

import anyio
from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from rtc.auth import Scope
from rtc.config import ServerConfig
from rtc.connections import ConnectionCounts, address_of
from rtc.errors import ClusterUnavailableError
from rtc.forwarded import TrustedProxies, client_address
from rtc.http.access import Access
from rtc.http.analytics import AnalyticsApi
from rtc.http.errors import HttpError
from rtc.http.openapi import document
from rtc.http.request import HttpRequest
from rtc.http.responses import (
    error_response,
    file_response,
    json_response,
    text_response,
)
from rtc.http.roster import cluster_room_json, cluster_rooms_json, room_json, rooms_json
from rtc.http.routes import (
    CaptureBlog,
    CaptureList,
    FeedRoute,
    Health,
    Ingest,
    Kick,
    LiveStats,
    MetricsText,
    OpenApiDocument,
    Page,
    RoomList,
    RoomRoute,
    Roster,
    Route,
    SessionTimeline,
    Stats,
    Streams,
    allowed,
    route,
)
from rtc.http.stats import StatsApi
from rtc.ids import RoomKey, id_from_json
from rtc.metrics import LiveFigures, Metrics
from rtc.rooms import RoomRegistry
from rtc.tokens import TokenChecker

if TYPE_CHECKING:
    from rtc.cluster.controls import SharedControls
    from rtc.cluster.reads import ClusterReads

__all__ = ["HttpApi"]

logger = logging.getLogger(__name__)

# The demo page's JavaScript, built from demo/src by npm (`make setup`), not kept in git.
DEMO_BUNDLE = "dist/app.js"
NOT_BUILT = b"""<!doctype html><meta charset="utf-8"><title>rtc: demo page not built</title>
<h1>The demo page is not built</h1>
<p>This server serves the demo from a folder whose JavaScript bundle
(<code>dist/app.js</code>) has not been built, so the page could only wait forever.</p>
<p>Build it from the source checkout with <code>make setup</code>, or
<code>npm ci --prefix demo &amp;&amp; npm run build --prefix demo</code>, then reload.
The WebSocket rooms and the HTTP API work meanwhile.</p>
"""


class HttpApi:
    """Answers HTTP requests and admits WebSocket handshakes.

    Args:
        config: the server configuration.
        metrics: counters.
        rooms: the loaded rooms (rosters).
        analytics: ingest, capture, streams and timelines.
        stats: the stats API.
        live: what is present right now.
        kick: closes a user's sessions in a room; returns how many.
        connections: open connection counts, for the caps.
        tokens: the token rules when the server has a secret: then every read but the
            health check, the pages and the stream configuration needs a credential.
        cluster: in cluster mode, the shared roster: rosters and live stats are the
            cluster's (the same from every node; a 503 when Redis does not answer), and the
            health check names the node and what it sees of the cluster.
        controls: in cluster mode, where a kick is shared with every node.
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
        tokens: TokenChecker | None = None,
        cluster: ClusterReads | None = None,
        controls: SharedControls | None = None,
    ) -> None:
        self._config = config
        self._cluster = cluster
        self._controls = controls
        self._metrics = metrics
        self._rooms = rooms
        self._analytics = analytics
        self._stats = stats
        self._live = live
        self._kick_user = kick
        self._connections = connections
        self._proxies = TrustedProxies.parse(config.forwarded_allow_ips)
        self._tokens = tokens
        self._access = Access(tokens)
        self._started = time.monotonic()

    # --- the two ways in ---------------------------------------------------------------

    def process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | Awaitable[Response] | None:
        """websockets' hook for every GET: admit an upgrade (None) or answer the request."""
        headers = {name.lower(): value for name, value in request.headers.raw_items()}
        plain = HttpRequest(
            method="GET", target=request.path, headers=headers,
            client=address_of(connection, self._proxies),
        )
        try:
            target = route(plain.target)
            if isinstance(target, RoomRoute | FeedRoute):
                self._admit_handshake(plain)
                if isinstance(target, FeedRoute):
                    # Room connections are checked by the driver (a close code y-websocket
                    # understands); a feed is refused here, before the upgrade.
                    self._access.room(plain, target.key, target.token)
                return None  # the WebSocket path: the server's handler takes it from here
        except HttpError as error:
            return self._refused(plain, error)
        # Work for a client that hangs up is stopped (a stats query is interrupted). Shielded:
        # the waiter is websockets' own, and a watcher that gives up must not cancel it.
        gone = asyncio.shield(connection.connection_lost_waiter)
        return self.respond(plain, target, disconnected=gone)

    async def plain_request(self, request: HttpRequest) -> Response:
        """Requests websockets does not parse: other methods (ingest, capture control, the
        admin API), and GETs with a body."""
        # The connection class knows the peer only; behind a trusted proxy, the client is
        # who it forwards for (what the ingest rate limit and the logs count).
        forwarded = client_address(request.client, request.headers.items(), self._proxies)
        request = replace(request, client=forwarded)
        try:
            target = route(request.target)
        except HttpError as error:
            return self._refused(request, error)
        return await self.respond(request, target)

    async def respond(
        self,
        request: HttpRequest,
        target: Route,
        *,
        disconnected: Awaitable[object] | None = None,
    ) -> Response:
        """Answer a routed request; every refusal and failure has the one error shape.

        Args:
            request: the request.
            target: its route.
            disconnected: done when the client has gone (long work is then abandoned).
        """
        try:
            allowed(target, request.method)
            return await self._dispatch(request, target, disconnected)
        except HttpError as error:
            return self._refused(request, error)
        except ClusterUnavailableError as error:
            return self._refused(request, HttpError(
                503, f"the cluster's Redis does not answer; try again shortly ({error.detail})",
                headers={"Retry-After": "1"},
            ))
        except Exception:
            logger.exception("HTTP %s %s failed", request.method, request.path)
            return self._refused(request, HttpError(500, "internal error"))

    def _refused(self, request: HttpRequest, error: HttpError) -> Response:
        self._metrics.http_errors.labels(str(error.status)).inc()
        logger.info("HTTP %d for %s %s from %s: %s", error.status, request.method,
                    request.path, request.client, error.message)
        return error_response(error.status, error.message, error.headers)

    # --- the routes ----------------------------------------------------------------------

    async def _dispatch(
        self, request: HttpRequest, target: Route, disconnected: Awaitable[object] | None
    ) -> Response:
        analytics, access = self._analytics, self._access
        match target:
            case Page(path=path):
                # Static: the session and stats pages hold no data; their API calls need the
                # credential (they pass on the page's own `?token=`).
                if path == "index.html" and not await self._demo_built():
                    return text_response(503, NOT_BUILT, "text/html; charset=utf-8")
                return await file_response(self._config.demo_dir, path)
            case Health():
                return json_response(200, self._health())
            case OpenApiDocument():
                return json_response(200, document())
            case MetricsText():
                access.scope(request, Scope.READ)
                content_type = "text/plain; version=0.0.4; charset=utf-8"
                return text_response(200, self._metrics.render(), content_type)
            case RoomList():
                access.scope(request, Scope.READ)
                if self._cluster is not None:
                    return json_response(200, cluster_rooms_json(await self._cluster.rooms()))
                return json_response(200, rooms_json(self._rooms.loaded()))
            case Roster(key=key):
                access.room(request, key)
                if self._cluster is not None:
                    roster = await self._cluster.roster(key)
                    return json_response(200, cluster_room_json(key, roster))
                return json_response(200, room_json(key, self._rooms.get(key)))
            case Kick(key=key):
                access.scope(request, Scope.ADMIN)
                return await self._kick(request, key)
            case Ingest() if request.method == "OPTIONS":
                return analytics.preflight(request)
            case Ingest():
                return analytics.ingest(request)
            case Streams(blog_id=blog_id):
                return json_response(200, analytics.streams_view(blog_id))
            case CaptureList():
                access.scope(request, Scope.ADMIN)
                return json_response(200, {"blogs": analytics.capture.to_json()})
            case CaptureBlog(blog_id=blog_id):
                access.scope(request, Scope.ADMIN)
                return await analytics.set_capture(request, blog_id)
            case SessionTimeline(key=key, session_id=session_id):
                access.room(request, key)
                return json_response(200, await analytics.timeline(key, session_id))
            case Stats():
                access.scope(request, Scope.READ)
                figures = await self._stats.figures(request, disconnected=disconnected)
                return json_response(200, figures)
            case LiveStats():
                access.scope(request, Scope.READ)
                if self._cluster is not None:
                    live = await self._stats.cluster_live(request, self._cluster.rooms)
                    return json_response(200, live)
                return json_response(200, self._stats.live(request))
            case RoomRoute() | FeedRoute():
                raise HttpError(400, "this path takes a WebSocket upgrade")

    async def _demo_built(self) -> bool:
        bundle = self._config.demo_dir / DEMO_BUNDLE
        return await anyio.to_thread.run_sync(bundle.is_file)

    def _health(self) -> dict[str, object]:
        # Open to anyone, so counts only: never a user id, a name or a room. This node's
        # figures; in a cluster, its id and what its last heartbeat saw (no Redis round trip:
        # a load balancer checks often, and a node serves its editors while Redis is down).
        live = self._live()
        health: dict[str, object] = {
            "status": "ok",
            "uptime_s": round(time.monotonic() - self._started, 3),
            "rooms": live.rooms,
            "connections": live.connections,
            "sessions": live.sessions,
        }
        if self._cluster is not None:
            health.update(self._cluster.health())
        return health

    async def _kick(self, request: HttpRequest, key: RoomKey) -> Response:
        """Revoke a user's tokens for a room, then close their sessions with 4403 `revoked`
        (in a cluster: on every node, and the tokens are refused by every node)."""
        body = request.json()
        if not isinstance(body, dict) or "user_id" not in body:
            raise HttpError(400, 'body must be JSON {"user_id": N}')
        user_id = id_from_json(body["user_id"])
        if user_id is None:
            raise HttpError(400, "user_id must be a positive integer below 2**63")
        shared: ClusterUnavailableError | None = None
        if self._tokens is not None:
            # Recorded first: a session closed now must not come straight back in.
            revoked_at = self._tokens.revoke(key, user_id)
            if self._controls is not None:
                try:
                    await self._controls.revoke(key, user_id, revoked_at)
                except ClusterUnavailableError as error:
                    shared = error
        closed = self._kick_user(key, user_id)  # the other nodes hear it from the room's log
        logger.info("room %s: user %d kicked (%d sessions)", key, user_id, closed)
        if shared is not None:
            raise HttpError(
                503, f"user {user_id} was kicked on this node only: the cluster's Redis does "
                "not answer; kick again when it is back", headers={"Retry-After": "1"},
            )
        return json_response(200, {"blog_id": key.blog_id, "post_id": key.post_id,
                                   "user_id": user_id, "closed": closed})

    # --- WebSocket handshakes --------------------------------------------------------------

    def _admit_handshake(self, request: HttpRequest) -> None:
        """Refuse a WebSocket handshake early: foreign Origins, too many connections.

        Raises:
            HttpError: 403, 429 or 503.
        """
        config = self._config
        origin = request.header("origin")
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
        by_address = self._connections.by_address[request.client]
        if config.max_connections_per_ip and by_address >= config.max_connections_per_ip:
            self._metrics.limit_refusals.labels("connections_per_ip").inc()
            raise HttpError(429, "too many connections from this address")
