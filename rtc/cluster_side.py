"""The driver's side of a cluster node: what the other nodes say of this node's rooms and
connections, carried out (`rtc.cluster.node.ClusterDriver`).

Room entries become the room's actions for this node's clients (`rtc.cluster.remote`);
`replaced` and `kick` entries close this node's connections; the node asks for state
vectors, for what is registered here, and to close everything when it was reaped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from rtc.actions import Broadcast, Note, Send, Share
from rtc.cluster.entries import Entry
from rtc.cluster.outcomes import Registration
from rtc.cluster.remote import CONNECTION_KINDS, Reply, answer
from rtc.errors import CloseCode
from rtc.ids import RoomKey
from rtc.metrics import Metrics
from rtc.peers import Peers
from rtc.room import Room
from rtc.rooms import RoomRegistry

if TYPE_CHECKING:
    from rtc.cluster.node import ClusterNode

__all__ = ["ClusterSide"]


class ClusterSide:
    """Carries out, on this node, what the other nodes say.

    Args:
        cluster: this node.
        rooms: the rooms loaded here.
        peers: the connections open here.
        kick_viewers: closes a kicked user's live-feed viewers of a room.
        metrics: counters.
    """

    def __init__(
        self,
        cluster: ClusterNode,
        *,
        rooms: RoomRegistry,
        peers: Peers,
        kick_viewers: Callable[[RoomKey, int], int],
        metrics: Metrics,
    ) -> None:
        self._cluster = cluster
        self._rooms = rooms
        self._peers = peers
        self._kick_viewers = kick_viewers
        self._metrics = metrics

    def remote(self, key: RoomKey, entry: Entry) -> None:
        """Another node said something about a room: carry out what it calls for."""
        room = self._rooms.get(key)
        if room is None:
            return
        if entry.kind in CONNECTION_KINDS:
            self._remote_connections(room, entry)
            return
        for action in answer(room, entry):
            match action:
                case Reply(kind=kind, data=data, target=target):
                    self._cluster.share(key, kind, data, target)
                case Share(kind=kind, data=data):
                    self._cluster.share(key, kind, data)
                case Send(connection=connection, data=data):
                    self._peers.send([connection], data)
                case Broadcast(data=data, to=to):
                    self._peers.send(to, data)
                case Note(what=what):
                    self._metrics.note(what)

    def _remote_connections(self, room: Room, entry: Entry) -> None:
        try:
            value = int(entry.data)
        except ValueError:
            self._metrics.note("remote-invalid")
            return
        if entry.kind == "replaced":  # its session reconnected through another node
            peer = self._peers.get(value)
            if peer is not None and peer.room is room:
                peer.replaced = True
                self._metrics.note("session-replaced")
                self._peers.close(peer, CloseCode.SESSION_CONFLICT, "session-replaced")
        else:  # "kick", asked on another node
            for session in room.sessions():
                peer = self._peers.get(session.connection)
                if session.user_id == value and peer is not None:
                    self._peers.close(peer, CloseCode.FORBIDDEN, "revoked")
            self._kick_viewers(room.key, value)

    def state_vector(self, key: RoomKey) -> bytes | None:
        room = self._rooms.get(key)
        return room.state_vector() if room is not None else None

    def presence(self, key: RoomKey) -> bytes | None:
        room = self._rooms.get(key)
        if room is None or room.is_empty:
            return None
        return room.local_presence()

    def registrations(self) -> list[tuple[RoomKey, Registration]]:
        node = self._cluster.node_id
        return [
            (room.key, Registration(
                node, s.connection, s.session_id, s.user_id, s.name, s.connected_at_ms,
                s.joined_at_ms,
            ))
            for room in self._rooms.loaded()
            for s in room.sessions()
        ]

    def close_all(self, code: int, reason: str) -> None:
        for peer in self._peers.all():
            peer.reaped = True
            self._peers.close(peer, code, reason)
