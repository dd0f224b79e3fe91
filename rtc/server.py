"""The WebSocket driver: accepts connections, feeds rooms, carries out what they decide.

Messages reach the room from the protocol callback that parsed them (`delivery.py`): no
queue, no task switch per message; the websockets handler only waits for the end. Sending
never awaits: a frame is encoded once for all its recipients and queued to each, written at
the end of the loop tick, bounded by `outbox_limit`; a peer whose backlog is full is closed
with 1013 so that it holds back nobody else. What is wired to what lives in `rtc.app`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from typing import TYPE_CHECKING

import anyio
from anyio.abc import TaskGroup
from websockets.asyncio.server import ServerConnection
from websockets.frames import Close as CloseFrame

from rtc.actions import (
    ECHO,
    Action,
    Blocked,
    Broadcast,
    CheckLiveness,
    Close,
    Identity,
    Joined,
    Left,
    Note,
    Persist,
    Reserve,
    Send,
    Session,
    Share,
)
from rtc.analytics.feed import EventFeed
from rtc.analytics.tracking import Tracking
from rtc.auth import Grant
from rtc.budget import CONTROL_COST, Budget, OverBudgetError, entries_cost
from rtc.closes import classify
from rtc.cluster_side import ClusterSide
from rtc.config import ServerConfig
from rtc.connections import ConnectionCounts, address_of
from rtc.decisions import Admission
from rtc.delivery import DeliveringConnection
from rtc.documents import Documents
from rtc.errors import (
    AnnounceTimeoutError,
    CloseCode,
    HeldTotalError,
    RtcError,
    ServerBusyError,
    UnsupportedDataError,
)
from rtc.expiry import TokenExpiry
from rtc.feeds import FeedViewers
from rtc.forwarded import TrustedProxies
from rtc.http.errors import HttpError
from rtc.http.routes import FeedRoute, RoomRoute, route
from rtc.ids import RoomKey
from rtc.inflight import InFlight
from rtc.metrics import Metrics
from rtc.peers import Peer, Peers
from rtc.protocol import awareness_header, decode
from rtc.room import Room
from rtc.rooms import RoomRegistry
from rtc.tokens import TokenChecker
from tracks.event import now_ms

if TYPE_CHECKING:
    from rtc.cluster.node import ClusterNode

__all__ = ["CLOSE_TIMEOUT", "RoomServer"]

logger = logging.getLogger(__name__)

CLOSE_TIMEOUT = 3.0  # seconds a closing handshake may take before the connection is cut
LIVENESS_TIMEOUT = 2.0  # seconds a session's holder has to answer a ping when it is claimed

# The limit a refusal before the room is counted under (rtc_limit_refusals_total{limit}).
_LIMIT_OF: dict[type[RtcError], str] = {HeldTotalError: "held", ServerBusyError: "rooms"}


class RoomServer:
    """Serves room and feed WebSockets: `handle` is websockets' connection handler.

    Args:
        config: the server configuration (limits, timeouts).
        tokens: checks a connection's room token; None when tokens are off.
        rooms: the loaded rooms.
        documents: where document updates are persisted.
        tracking: where room transitions become events.
        feed: the live event feed for `/events` viewers.
        metrics: counters.
        task_group: where closing handshakes run.
        cluster: this node of a cluster (rooms shared through Redis), None on one node.
    """

    def __init__(
        self,
        config: ServerConfig,
        *,
        tokens: TokenChecker | None,
        rooms: RoomRegistry,
        documents: Documents,
        tracking: Tracking,
        feed: EventFeed,
        metrics: Metrics,
        task_group: TaskGroup,
        cluster: ClusterNode | None = None,
    ) -> None:
        self._config = config
        self._cluster = cluster
        self._tokens = tokens
        self._rooms = rooms
        self._documents = documents
        self._tracking = tracking
        self._metrics = metrics
        self._task_group = task_group
        self._ids = itertools.count(1)
        self._cluster_calls = InFlight(task_group)
        self._peers = Peers(
            metrics=metrics, outbox_limit=config.outbox_limit, task_group=task_group,
            close_timeout=CLOSE_TIMEOUT,
        )
        self.connections = ConnectionCounts()
        self._proxies = TrustedProxies.parse(config.forwarded_allow_ips)
        self.expiry = TokenExpiry(self._token_expired)
        self._viewers = FeedViewers(
            feed,
            tokens=tokens,
            watch=self.expiry.watch,
            outbox_limit=config.outbox_limit,
            task_group=task_group,
            close_timeout=CLOSE_TIMEOUT,
        )
        if cluster is not None:
            cluster.attach(
                ClusterSide(cluster, rooms=rooms, peers=self._peers,
                            kick_viewers=self._viewers.kick, metrics=metrics)
            )

    async def handle(self, ws: ServerConnection) -> None:
        """websockets' handler: serve an admitted upgrade until the connection ends."""
        if not isinstance(ws, DeliveringConnection) or ws.request is None:
            raise TypeError("serve(create_connection=...) must make DeliveringConnections")
        address = address_of(ws, self._proxies)
        self.connections.opened(address)
        try:
            target = route(ws.request.path)  # admitted by process_request: routes again
            if isinstance(target, FeedRoute):
                await self._viewers.serve(next(self._ids), ws, target)
            elif isinstance(target, RoomRoute):
                await self._serve_room(ws, target)
        except HttpError:  # pragma: no cover - process_request refused it already
            await ws.close(CloseCode.POLICY_VIOLATION, "bad-path")
        finally:
            self.connections.closed(address)

    def kick(self, key: RoomKey, user_id: int) -> int:
        """Close a user's sessions and feed viewers in a room with 4403 `revoked`; returns how
        many connections were closed."""
        room = self._rooms.get(key)
        closed = 0
        for session in room.sessions() if room is not None else ():
            peer = self._peers.get(session.connection)
            if session.user_id == user_id and peer is not None:
                self._peers.close(peer, CloseCode.FORBIDDEN, "revoked")
                closed += 1
        if self._cluster is not None:
            self._cluster.share(key, "kick", str(user_id).encode())
        return closed + self._viewers.kick(key, user_id)

    def _token_expired(self, connection: int) -> None:
        peer = self._peers.get(connection)
        if peer is None:
            self._viewers.expired(connection)
        else:
            logger.info("connection %d: token expired", connection)
            self._peers.close(peer, CloseCode.AUTHENTICATION_FAILED, "token-expired")

    def _verify(self, target: RoomRoute) -> Grant | None:
        """The token's grant when tokens are on (raises AuthenticationError, ForbiddenError)."""
        return None if self._tokens is None else self._tokens(target.token, target.key)

    async def _serve_room(self, ws: DeliveringConnection, target: RoomRoute) -> None:
        connection_id = next(self._ids)
        connected_at_ms = now_ms()
        try:
            grant = self._verify(target)
            room = await self._rooms.enter(target.key, max_rooms=self._config.max_rooms)
        except RtcError as error:
            if isinstance(error, HeldTotalError | ServerBusyError):
                self._metrics.limit_refusals.labels(_LIMIT_OF[type(error)]).inc()
            # Refused before the room: no document, no presence, no session.
            logger.info(
                "connection %d to room %s refused: %s (%s)",
                connection_id,
                target.key,
                error.error_code,
                error.detail,
            )
            self._metrics.closes.labels(str(error.close_code)).inc()
            self._tracking.connection_error(
                target.key,
                connection=connection_id,
                connected_at_ms=connected_at_ms,
                session=None,
                error_code=error.error_code,
                close_code=error.close_code,
            )
            await ws.close(error.close_code, error.reason)
            return
        config = self._config
        budget = Budget(
            messages_per_second=config.max_messages_per_second,
            message_burst=config.message_burst,
            bytes_per_second=config.bytes_per_second,
            byte_burst=config.byte_burst,
            outbox_limit=config.outbox_limit,
            now=time.monotonic(),
        )
        peer = Peer(connection_id, ws, target, room, connected_at_ms, budget, grant)
        identity = Identity(grant.user_id, grant.name) if grant is not None else None
        room.open(peer.id, peer.connected_at_ms, identity=identity)
        self._peers.add(peer)
        if grant is not None:
            self.expiry.watch(peer.id, grant.expires_at)
        logger.info("connection %d opened to room %s", peer.id, target.key)
        peer.announce_deadline = asyncio.get_running_loop().call_later(
            config.announce_timeout, self._announce_overdue, peer
        )
        try:
            ws.attach(
                lambda data, text: self._receive(peer, data, text),
                on_control=lambda size: self._control(peer, size),
            )
            await ws.wait_closed()
        finally:
            ws.detach()
            peer.announce_deadline.cancel()
            self._end(peer)

    def _announce_overdue(self, peer: Peer) -> None:
        if peer.room.session_of(peer.id) is None:
            self._peers.fail(peer, AnnounceTimeoutError())

    def _receive(self, peer: Peer, data: bytes, text: bool) -> None:
        if peer.close_code is not None:
            return
        try:
            if text:
                self._metrics.received(b"")
                raise UnsupportedDataError("text frame")
            room = peer.room
            # Charged before any work, by what its header says it will cost.
            header = awareness_header(data)  # None: not awareness
            awareness = header is not None
            if header is None:
                self._charge(peer, 1.0, len(data))
            else:
                entries, sender = header
                limit = room.limits.max_awareness_entries
                self._charge(peer, entries_cost(entries, max_entries=limit), len(data))
                if room.sent_by_other(peer.id, sender):  # most of a busy room's traffic
                    self._metrics.received_echo(len(data), ECHO.what)
                    return
            self._metrics.received(data)
            admitted = room.session_of(peer.id) is not None
            now = now_ms()
            actions = room.receive(peer.id, decode(data), now)
            self._carry_out(peer, actions)
            if awareness and ECHO not in actions:
                self._charge(peer, 1.0)  # a presence change goes out to everyone
            if not admitted and room.session_of(peer.id) is not None:
                self._admitted(peer, now)
        except RtcError as error:
            self._peers.fail(peer, error)
        except Exception:
            logger.exception("connection %d: message handling failed", peer.id)
            self._peers.fail(peer, RtcError("message handling failed"))

    def _admitted(self, peer: Peer, now: int) -> None:
        """A connection named its session: lift what bounds a newcomer, replay what it held."""
        if peer.announce_deadline is not None:
            peer.announce_deadline.cancel()
        peer.ws.protocol.max_message_size = self._config.max_message_size
        for held in peer.room.take_held(peer.id):
            self._carry_out(peer, peer.room.receive(peer.id, held, now))

    def _control(self, peer: Peer, size: int) -> None:
        """A ping or pong arrived (websockets answers pings itself): it costs like a message."""
        if peer.close_code is None:
            try:
                self._charge(peer, CONTROL_COST, size)
            except RtcError as error:
                self._peers.fail(peer, error)

    def _charge(self, peer: Peer, cost: float, size: int = 0) -> None:
        """Take a message's cost and size from the connection's budget (raises
        OverBudgetError)."""
        try:
            peer.budget.charge(time.monotonic(), cost=cost, size=size)
        except OverBudgetError as error:
            self._metrics.limit_refusals.labels(error.exhausted).inc()
            raise

    async def _check_liveness(self, check: CheckLiveness, room: Room) -> None:
        """Carry out a `CheckLiveness`: ping the holder, then let the room decide."""
        holder, alive = self._peers.get(check.holder), False
        if holder is not None and holder.close_code is None:
            with anyio.move_on_after(LIVENESS_TIMEOUT):
                alive = await holder.ws.answers_ping()
        claimant = self._peers.get(check.claimant)
        if claimant is None or claimant.close_code is not None:
            return
        now = now_ms()
        try:
            self._carry_out(claimant, room.liveness_checked(claimant.id, check.holder, now,
                                                            alive=alive))
            if room.session_of(claimant.id) is not None:
                self._admitted(claimant, now)
        except RtcError as error:
            self._peers.fail(claimant, error)

    async def settle(self, *, within: float) -> None:
        """Wait (at most `within` seconds) for calls to the cluster still under way: at
        shutdown, so that every session is released and recorded before the node goes."""
        await self._cluster_calls.settle(within=within)

    async def _reserve(self, reserve: Reserve, peer: Peer) -> None:
        """Carry out a `Reserve`: the cluster decides, then the room finishes the admission."""
        assert self._cluster is not None
        limits = peer.room.limits
        decision = await self._cluster.admit(
            peer.room.key, reserve, max_contributors=limits.max_contributors,
            max_connections=limits.max_connections,
        )
        now = now_ms()
        gone = self._peers.get(peer.id) is not peer or peer.close_code is not None
        actions = [] if gone else peer.room.reserved(peer.id, decision, now)
        if not actions:  # it left while the cluster decided: release what was reserved
            if isinstance(decision, Admission):
                session = Session(peer.id, reserve.session_id, reserve.user_id, reserve.name,
                                  reserve.connected_at_ms, now)
                await self._cluster.leave(Left(peer.room.key, session, now, True), clock=None)
            return
        try:
            self._carry_out(peer, actions)
            if peer.room.session_of(peer.id) is not None:
                self._admitted(peer, now)
        except RtcError as error:
            self._peers.fail(peer, error)

    async def _left_cluster(self, left: Left) -> None:
        """A session ended on this node: release it cluster-wide, then record it unless the
        cluster says another node did (it was reaped while this node was cut off)."""
        assert self._cluster is not None
        outcome = await self._cluster.leave(left, clock=left.awareness_clock)
        if outcome != "gone":
            self._tracking.left(left)

    def _carry_out(self, peer: Peer, actions: list[Action]) -> None:
        for action in actions:
            match action:
                case Send(connection=connection, data=data):
                    self._peers.send([connection], data)
                case Broadcast(data=data, to=to):
                    self._peers.send(to, data)
                case Persist(update=update):
                    self._documents.append(peer.room.key, update)
                    self._rooms.persisted(peer.room)
                case Joined():
                    logger.info(
                        "connection %d joined room %s as session %d",
                        action.session.connection,
                        action.room,
                        action.session.session_id,
                    )
                    joiner = self._peers.get(action.session.connection) or peer
                    self._tracking.joined(action, post_type=joiner.route.post_type)
                case Blocked():
                    logger.info(
                        "connection %d blocked from room %s (%s limit %d)",
                        action.connection,
                        action.room,
                        action.limit_kind,
                        action.limit,
                    )
                    self._tracking.blocked(action)
                case Left() if self._cluster is not None:
                    self._cluster_calls.start(self._left_cluster, action)
                case Left():
                    self._tracking.left(action)
                case CheckLiveness():
                    self._task_group.start_soon(self._check_liveness, action, peer.room)
                case Reserve():
                    self._cluster_calls.start(self._reserve, action, peer)
                case Share(kind=kind, data=data) if self._cluster is not None:
                    self._cluster.share(peer.room.key, kind, data)
                case Close(connection=connection, code=code, reason=reason):
                    target = self._peers.get(connection)
                    if target is not None:
                        self._peers.close(target, code, reason)
                case Note(what=what):
                    self._metrics.note(what)

    def _end(self, peer: Peer) -> None:
        """The connection is over: classify how, remove its presence, record what happened."""
        self._peers.pop(peer.id)
        room = peer.room
        session = room.session_of(peer.id)
        protocol = peer.ws.protocol
        ending = classify(
            error=peer.error,
            decided=(peer.close_code, peer.close_reason) if peer.close_code is not None else None,
            received=_frame(protocol.close_rcvd),
            sent=_frame(protocol.close_sent),
        )
        error_code, close_code = ending.error_code, ending.close_code
        self._metrics.closes.labels(str(close_code)).inc()
        now = now_ms()
        self._carry_out(
            peer, room.close(peer.id, now, clean=ending.clean, keep_presence=peer.replaced)
        )
        if error_code is not None and not peer.reaped:
            self._tracking.connection_error(
                room.key,
                connection=peer.id,
                connected_at_ms=peer.connected_at_ms,
                session=session,
                error_code=error_code,
                close_code=close_code,
            )
        logger.info(
            "connection %d to room %s ended: close %d%s",
            peer.id,
            room.key,
            close_code,
            f" ({error_code})" if error_code else "",
        )
        self._rooms.released(room)


def _frame(close: CloseFrame | None) -> tuple[int, str] | None:
    return (close.code, close.reason) if close is not None else None
