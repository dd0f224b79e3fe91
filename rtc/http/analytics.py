"""The analytics side of the HTTP API: client event ingest, capture control, session timelines.

Ingest is best-effort for the browser: it validates, hands events to the recorders (which
only enqueue) and answers 202 at once; invalid events are reported in the body, not stored.
With tokens on, each event's room must be the token's and its user is the token's.
No IP address is stored: the per-address rate limit lives in memory only. Who may call the
capture and timeline handlers is decided before them (`rtc.http.access`).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
from websockets.http11 import Response

from rtc.analytics.capture import BlogCapture, CaptureSettings
from rtc.analytics.ingest import BATCH_DEPTH, BatchError, RecentIds, Rejection, parse_batch
from rtc.analytics.tracking import Tracking
from rtc.auth import Grant
from rtc.config import ServerConfig
from rtc.errors import ClusterUnavailableError, RtcError
from rtc.http.access import credential
from rtc.http.errors import HttpError
from rtc.http.request import HttpRequest
from rtc.http.responses import json_response, text_response
from rtc.ids import RoomKey, id_from_json
from rtc.metrics import Metrics
from rtc.ratelimit import TokenBucket
from rtc.tokens import TokenChecker
from tracks import JSONValue
from tracks.event import now_ms
from tracks.presence.reading import store_exists
from tracks.presence.timeline import session_timeline

if TYPE_CHECKING:
    from rtc.cluster.controls import SharedControls

__all__ = ["AnalyticsApi"]

logger = logging.getLogger(__name__)

MAX_BATCH_EVENTS = 500
MAX_EVENT_AGE_MS = 7 * 86_400_000
MAX_TRACKED_ADDRESSES = 10_000


class AnalyticsApi:
    """Handlers for `/api/events`, `/api/capture` and `/api/sessions/...`.

    Args:
        config: the server configuration (secret, origins, ingest limits).
        tracking: where accepted events are recorded.
        metrics: counters.
        capture: per-blog capture settings.
        event_store: the event store timelines are read from, if any: a SQLite file's
            path or a ``postgresql://`` URL.
        tokens: the token rules when the server has a secret (client events then need a
            room token).
        controls: in cluster mode, where capture settings are changed for every node (in
            Redis, not in this node's file).
    """

    def __init__(
        self,
        config: ServerConfig,
        *,
        tracking: Tracking,
        metrics: Metrics,
        capture: CaptureSettings,
        event_store: str | Path | None,
        tokens: TokenChecker | None = None,
        controls: SharedControls | None = None,
    ) -> None:
        self._config = config
        self._controls = controls
        self._tokens = tokens
        self._tracking = tracking
        self._metrics = metrics
        self.capture = capture
        self._event_store = event_store
        self._recent = RecentIds()
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    # --- CORS ----------------------------------------------------------------------------

    def cors_headers(self, request: HttpRequest) -> dict[str, str]:
        """CORS for a browser page on an origin of `--allowed-origin`, and for no other.

        Never `Access-Control-Allow-Credentials`: the token travels in the request itself
        (`Authorization` or `?token=`), never in a cookie, so a browser has no reason to
        send credentials, and another site's page cannot borrow a user's.

        Raises:
            HttpError: 403 for an Origin outside a configured `--allowed-origin`.
        """
        origin = request.header("origin")
        allowed = self._config.allowed_origins
        if origin is None or not allowed:
            return {}  # same-origin pages and non-browsers need none; foreign pages get none
        if origin not in allowed:
            raise HttpError(403, f"origin not allowed: {origin}")
        return {
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Methods": "POST, OPTIONS",
            "Access-Control-Allow-Headers": "Content-Type, Authorization",
            "Access-Control-Max-Age": "600",
            "Vary": "Origin",
        }

    def preflight(self, request: HttpRequest) -> Response:
        return text_response(204, b"", "text/plain", self.cors_headers(request))

    # --- ingest --------------------------------------------------------------------------

    def ingest(self, request: HttpRequest) -> Response:
        """`POST /api/events`: validate, deduplicate and record a browser's batch."""
        headers = self.cors_headers(request)
        if not self._allow(request.client):
            self._metrics.limit_refusals.labels("ingest").inc()
            raise HttpError(429, "too many batches from this address; retry later")
        payload = request.json(max_depth=BATCH_DEPTH)
        grant, refusal = self._grant(request)
        try:
            events, rejections = parse_batch(
                payload,
                max_events=MAX_BATCH_EVENTS,
                window_ms=int(self._config.ingest_window * 1000),
                now_ms=now_ms(),
                max_age_ms=MAX_EVENT_AGE_MS,
                user_id=None if grant is None else grant.user_id,
            )
        except BatchError as error:
            raise HttpError(400, str(error)) from None
        accepted = duplicates = dropped = 0
        for index, event in events:
            room = _room_of(event.props)
            reason = refusal or self._refusal(room, grant)
            if reason is not None:
                rejections.append(Rejection(index, reason))
                continue
            if event.event_id in self._recent:
                duplicates += 1
                continue
            routing = self._tracking.record(event, room, origin="client")
            if routing.accepted or routing.sampled_out:
                self._recent.add(event.event_id)
            if routing.accepted:
                accepted += 1
            elif routing.sampled_out:
                dropped += 1
            else:
                rejections.append(Rejection(index, routing.reason or "rejected"))
        rejections.sort(key=lambda rejection: rejection.index)
        for outcome, count in (
            ("accepted", accepted), ("duplicate", duplicates), ("dropped", dropped),
            ("rejected", len(rejections)),
        ):
            if count:
                self._metrics.ingest.labels(outcome).inc(count)
        return json_response(
            202,
            {
                "accepted": accepted,
                "duplicates": duplicates,
                "dropped": dropped,
                "rejected": [rejection.to_json() for rejection in rejections],
            },
            headers,
        )

    def _grant(self, request: HttpRequest) -> tuple[Grant | None, str | None]:
        """The sender's room token, or why every event of the batch is refused."""
        if self._tokens is None:
            return None, None
        try:
            return self._tokens.grant(credential(request)), None
        except RtcError as error:
            return None, error.error_code

    def _refusal(self, room: RoomKey | None, grant: Grant | None) -> str | None:
        if self._tokens is None or grant is None:
            return None
        if room is None:
            return "blog_id and post_id are required when tokens are on"
        try:
            self._tokens.admit(grant, room)
        except RtcError as error:
            return error.error_code
        return None

    def _allow(self, address: str) -> bool:
        bucket = self._buckets.pop(address, None)
        now = time.monotonic()
        if bucket is None:
            bucket = TokenBucket(self._config.ingest_rate, self._config.ingest_burst, now)
        self._buckets[address] = bucket  # most recent last
        if len(self._buckets) > MAX_TRACKED_ADDRESSES:
            self._buckets.popitem(last=False)
        return bucket.take(now)

    # --- capture control -------------------------------------------------------------------

    async def set_capture(self, request: HttpRequest, blog_id: int) -> Response:
        """`PUT|POST /api/capture/{blog_id}` with `{"enabled": bool, "sample_rate": 0..1}`.

        In cluster mode the change is the cluster's (a 503 when Redis does not take it).
        """
        body = request.json() if request.body else {}
        try:
            if not isinstance(body, dict):
                raise TypeError
            current = self.capture.for_blog(blog_id)
            enabled = body.get("enabled", current.enabled)
            rate = body.get("sample_rate", current.sample_rate)
            if not isinstance(enabled, bool) or not isinstance(rate, int | float):
                raise TypeError
            settings = BlogCapture(enabled=enabled, sample_rate=float(rate))
        except (ValueError, TypeError, AttributeError, OverflowError):
            raise HttpError(
                400, 'body must be {"enabled": true|false, "sample_rate": 0..1}'
            ) from None
        if self._controls is None:
            self.capture.set(blog_id, settings)
        else:
            try:
                await self._controls.set_capture(blog_id, settings)
            except ClusterUnavailableError as error:
                raise HttpError(503, f"the cluster's Redis does not answer: {error}") from None
        return json_response(200, {"blog_id": blog_id, **settings.to_json()})

    def streams_view(self, blog_id: int | None) -> dict[str, object]:
        """`GET /api/streams`: what a browser needs to sample and send like the server."""
        view: dict[str, object] = {
            **self._tracking.streams.client_view(),
            "endpoint": "/api/events",
        }
        if blog_id is not None:
            view["capture"] = {"blog_id": blog_id, **self.capture.for_blog(blog_id).to_json()}
        return view

    # --- session timelines -----------------------------------------------------------------

    async def timeline(self, key: RoomKey, session_id: int) -> dict[str, JSONValue]:
        """`GET /api/sessions/{blog_id}/{post_id}/{session_id}`.

        Raises:
            HttpError: 404 without an event store or without events of that session.
        """
        store = self._event_store
        if store is None or not store_exists(store):
            raise HttpError(404, "no SQLite or PostgreSQL event store to read sessions from")
        found = await anyio.to_thread.run_sync(
            partial(
                session_timeline, store, key.blog_id, key.post_id, session_id,
                archive=self._config.archive_dir,
            )
        )
        if found is None:
            raise HttpError(404, f"no events of session {session_id} in {key}")
        return found


def _room_of(props: Mapping[str, JSONValue]) -> RoomKey | None:
    blog_id, post_id = id_from_json(props.get("blog_id")), id_from_json(props.get("post_id"))
    if blog_id is None or post_id is None:
        return None
    return RoomKey(blog_id, post_id)
