"""Who is present in each room of a host server, and who may join: for integrations.

No I/O here; time is passed in. The host library owns the documents and the sockets; this
keeps the sessions (one per admitted connection, named by its awareness clientID), the
contributor roster and admission under `RoomLimits`, and returns the same `Joined`,
`Blocked` and `Left` decisions `rtc.room.Room` returns, so `rtc.analytics.tracking`
records them unchanged.
"""

from __future__ import annotations

from rtc.actions import Blocked, ConnectionId, Contributor, Joined, Left, Session
from rtc.history import SessionHistory
from rtc.ids import RoomKey
from rtc.limits import RoomLimits

__all__ = ["Roster"]


class Roster:
    """The admitted sessions of every room, with admission under limits.

    Args:
        limits: the admission limits (`max_contributors`, `max_connections`).
        history: recent ends and refusals (reconnect flags, one `blocked` per session).
    """

    def __init__(self, limits: RoomLimits, *, history: SessionHistory | None = None) -> None:
        self.limits = limits
        self._history = history or SessionHistory()
        self._rooms: dict[RoomKey, dict[ConnectionId, Session]] = {}
        self._room_of: dict[ConnectionId, RoomKey] = {}

    def admit(
        self,
        room: RoomKey,
        *,
        connection: ConnectionId,
        session_id: int,
        user_id: int | None,
        name: str | None,
        connected_at_ms: int,
        now_ms: int,
    ) -> Joined | Blocked:
        """Admit a connection that announced its session, or refuse it under a limit.

        Raises:
            ValueError: the connection is already admitted.
        """
        if connection in self._room_of:
            raise ValueError(f"connection {connection} is already admitted")
        sessions = self._rooms.get(room, {})
        newcomer = Session(
            connection=connection,
            session_id=session_id,
            user_id=user_id,
            name=name,
            connected_at_ms=connected_at_ms,
            joined_at_ms=now_ms,
        )
        present = {session.contributor for session in sessions.values()}
        reached = self.limits.reached(present, len(sessions), newcomer.contributor)
        key = (room.blog_id, room.post_id, session_id)
        if reached is not None:
            limit, kind = reached
            return Blocked(
                room=room,
                connection=connection,
                session_id=session_id,
                user_id=user_id,
                contributors=self.contributor_ids(room),
                session_count=len(sessions),
                limit=limit,
                limit_kind=kind,
                first=self._history.note_blocked(key, now_ms),
            )
        self._rooms.setdefault(room, {})[connection] = newcomer
        self._room_of[connection] = room
        return Joined(
            room=room,
            session=newcomer,
            contributors=self.contributor_ids(room),
            session_count=len(self._rooms[room]),
            previous_end=self._history.previous_end(key, now_ms),
        )

    def leave(self, connection: ConnectionId, *, now_ms: int, clean: bool) -> Left | None:
        """The end of an admitted connection's session (None if it was never admitted)."""
        room = self._room_of.pop(connection, None)
        if room is None:
            return None
        sessions = self._rooms[room]
        session = sessions.pop(connection)
        if not sessions:
            del self._rooms[room]
        self._history.note_end(
            (room.blog_id, room.post_id, session.session_id), now_ms, abnormal=not clean
        )
        return Left(room=room, session=session, ended_at_ms=now_ms, clean=clean)

    def session_of(self, connection: ConnectionId) -> Session | None:
        room = self._room_of.get(connection)
        return None if room is None else self._rooms[room].get(connection)

    def sessions(self, room: RoomKey) -> tuple[Session, ...]:
        """The room's sessions, oldest first."""
        return tuple(self._rooms.get(room, {}).values())

    def contributor_ids(self, room: RoomKey) -> tuple[int, ...]:
        """Distinct user ids present, sorted (anonymous sessions are not listed)."""
        return tuple(
            sorted({s.user_id for s in self.sessions(room) if s.user_id is not None})
        )

    def contributors(self, room: RoomKey) -> tuple[Contributor, ...]:
        """The room's roster: each user (or anonymous session) with its sessions."""
        grouped: dict[tuple[str, int], list[Session]] = {}
        for session in self.sessions(room):
            grouped.setdefault(session.contributor, []).append(session)
        return tuple(
            Contributor(user_id=group[0].user_id, name=group[-1].name, sessions=tuple(group))
            for group in grouped.values()
        )

    def rooms(self) -> tuple[RoomKey, ...]:
        """Rooms with at least one session."""
        return tuple(self._rooms)
