"""Viewers of the live event feed (`ws://…/events`): each one is sent its room's events, and
closed when its token expires or its user is kicked from the room."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from anyio.abc import TaskGroup

from rtc.analytics.feed import EventFeed
from rtc.delivery import DeliveringConnection, encode
from rtc.errors import CloseCode, RtcError
from rtc.http.access import credential
from rtc.http.request import HttpRequest
from rtc.http.routes import FeedRoute
from rtc.ids import RoomKey
from rtc.tokens import TokenChecker

__all__ = ["FeedViewers"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Viewer:
    ws: DeliveringConnection
    key: RoomKey
    user_id: int | None


class FeedViewers:
    """The open feed connections.

    Args:
        feed: the events to send.
        tokens: the token rules (None: the server runs open); a viewer was admitted at the
            handshake (`rtc.http.api`), so its credential is valid: it is watched.
        watch: arranges `expired(viewer)` for when the viewer's credential runs out.
        outbox_limit: bytes that may wait for one viewer; a slower one misses events.
        task_group: where closing handshakes run.
        close_timeout: seconds a closing handshake may take before the connection is cut.
    """

    def __init__(
        self,
        feed: EventFeed,
        *,
        tokens: TokenChecker | None,
        watch: Callable[[int, float], None],
        outbox_limit: int,
        task_group: TaskGroup,
        close_timeout: float,
    ) -> None:
        self._feed = feed
        self._tokens = tokens
        self._watch = watch
        self._outbox_limit = outbox_limit
        self._task_group = task_group
        self._close_timeout = close_timeout
        self._viewers: dict[int, _Viewer] = {}

    async def serve(self, viewer: int, ws: DeliveringConnection, target: FeedRoute) -> None:
        """Send the room's events to `ws` until it closes."""
        key, user_id = target.key, None
        if self._tokens is not None and ws.request is not None:
            headers = {name.lower(): value for name, value in ws.request.headers.raw_items()}
            request = HttpRequest(method="GET", target=ws.request.path, headers=headers)
            try:
                expires_at, user_id = self._tokens.holder(credential(request))
            except RtcError:  # expired between the handshake and now
                await ws.close_within(
                    CloseCode.AUTHENTICATION_FAILED, "token-expired", self._close_timeout
                )
                return
            self._watch(viewer, expires_at)

        def deliver(text: str) -> None:
            # A viewer too slow to keep up misses events rather than holding anything back.
            ws.queue(encode(text.encode(), text=True), self._outbox_limit)

        ws.attach(lambda data, text: None)  # viewers have nothing to say
        self._viewers[viewer] = _Viewer(ws, key, user_id)
        unsubscribe = self._feed.subscribe(key, deliver)
        try:
            await ws.wait_closed()
        finally:
            unsubscribe()
            self._viewers.pop(viewer, None)

    def expired(self, viewer: int) -> bool:
        """Close a viewer whose token ran out (4401 `token-expired`); False: no such viewer."""
        found = self._viewers.get(viewer)
        if found is not None:
            logger.info("feed viewer %d: token expired", viewer)
            self._close(found, CloseCode.AUTHENTICATION_FAILED, "token-expired")
        return found is not None

    def kick(self, key: RoomKey, user_id: int) -> int:
        """Close a kicked user's viewers of a room (4403 `revoked`); returns how many."""
        kicked = [v for v in self._viewers.values() if v.key == key and v.user_id == user_id]
        for viewer in kicked:
            self._close(viewer, CloseCode.FORBIDDEN, "revoked")
        return len(kicked)

    def _close(self, viewer: _Viewer, code: int, reason: str) -> None:
        self._task_group.start_soon(viewer.ws.close_within, code, reason, self._close_timeout)
