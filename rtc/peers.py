"""A server's open room connections: each one's state, and what is done to them from
anywhere in the driver: send a frame to some, close one, fail one with an error.

Sending never awaits: a frame is encoded once for all its recipients and queued to each,
bounded by `outbox_limit`; a peer whose backlog is full is closed with 1013 so that it
holds back nobody else.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from anyio.abc import TaskGroup

from rtc.auth import Grant
from rtc.budget import Budget
from rtc.delivery import DeliveringConnection, encode
from rtc.errors import CloseCode, RtcError
from rtc.http.routes import RoomRoute
from rtc.metrics import Metrics
from rtc.room import Room

__all__ = ["Peer", "Peers"]

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class Peer:
    """An open connection to a room, from its upgrade to its end."""

    id: int
    ws: DeliveringConnection
    route: RoomRoute
    room: Room
    connected_at_ms: int
    budget: Budget
    grant: Grant | None = None
    close_code: int | None = None
    close_reason: str = ""
    error: RtcError | None = None
    announce_deadline: asyncio.TimerHandle | None = None
    replaced: bool = False  # its session was taken over on another node
    reaped: bool = False  # the cluster took this node for dead: its end is recorded already


class Peers:
    """The open connections by id.

    Args:
        metrics: counts what is sent.
        outbox_limit: bytes that may wait for one peer.
        task_group: where closing handshakes run.
        close_timeout: seconds a closing handshake may take before the connection is cut.
    """

    def __init__(
        self, *, metrics: Metrics, outbox_limit: int, task_group: TaskGroup, close_timeout: float
    ) -> None:
        self._metrics = metrics
        self._outbox_limit = outbox_limit
        self._task_group = task_group
        self._close_timeout = close_timeout
        self._by_id: dict[int, Peer] = {}

    def get(self, connection: int) -> Peer | None:
        return self._by_id.get(connection)

    def add(self, peer: Peer) -> None:
        self._by_id[peer.id] = peer

    def pop(self, connection: int) -> Peer | None:
        return self._by_id.pop(connection, None)

    def all(self) -> list[Peer]:
        return list(self._by_id.values())

    def send(self, connections: Sequence[int], data: bytes) -> None:
        frame = encode(data)
        sent = 0
        limit = self._outbox_limit
        peers = self._by_id
        for connection in connections:
            target = peers.get(connection)
            if target is None or target.close_code is not None:
                continue
            if target.ws.queue(frame, limit):
                sent += 1
            else:
                self.close(target, CloseCode.TRY_AGAIN_LATER, "outbox-full")
        if sent:
            self._metrics.sent(data, sent)

    def fail(self, peer: Peer, error: RtcError) -> None:
        if peer.error is None and peer.close_code is None:
            peer.error = error
            logger.info("connection %d closed: %s (%s)", peer.id, error.error_code, error.detail)
        self.close(peer, error.close_code, error.reason)

    def close(self, peer: Peer, code: int, reason: str) -> None:
        if peer.close_code is not None:
            return
        peer.close_code, peer.close_reason = code, reason
        self._task_group.start_soon(peer.ws.close_within, code, reason, self._close_timeout)
