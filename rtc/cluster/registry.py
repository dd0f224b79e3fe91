"""The cluster's shared roster on Redis: admission, leaving, node liveness and reaping.

Every decision that must hold across nodes is one Lua script (`rtc.cluster.scripts`), so it
is atomic: ten newcomers racing through three nodes for two places get exactly two
admissions. Node liveness is judged by Redis's clock, never a node's. This module only
talks to Redis; the result types are pure (`rtc.cluster.outcomes`, `rtc.decisions`). Any
`redis.exceptions.RedisError` or `OSError` propagates: the caller treats it as "cluster
unavailable".
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from redis.asyncio import Redis

from rtc.cluster.keys import Keys, room_member
from rtc.cluster.outcomes import Heartbeat, Reaped, Registration
from rtc.cluster.scripts import register_scripts
from rtc.decisions import Admission, Conflict, Decision, Refusal
from rtc.history import RecentEnd
from rtc.ids import RoomKey

__all__ = ["LOG_MAX_LEN", "MAX_HISTORY", "ROOM_TTL_MS", "Registry"]

MAX_HISTORY = 50_000  # ends and blocked sessions remembered per room, at most
ROOM_TTL_MS = 24 * 3600_000  # a room's history and log vanish this long after the last write
LOG_MAX_LEN = 100_000  # entries the scripts leave in a room's log, at most (approximately)


class Registry:
    """The roster of every room, shared by the nodes through one Redis.

    Args:
        redis: a `redis.asyncio.Redis` (bytes or decoded replies alike).
        keys: the key names (their prefix).
        node_id: this node.
    """

    def __init__(self, redis: Redis, keys: Keys, node_id: str) -> None:
        if not node_id or ":" in node_id or "{" in node_id or "}" in node_id:
            raise ValueError("node_id must be non-empty, without ':', '{' or '}'")
        self._redis = redis
        self._keys = keys
        self.node_id = node_id
        self._scripts = register_scripts(redis)

    # --- settings and liveness ---------------------------------------------------------

    async def check_settings(
        self, settings: Mapping[str, str], *, node_timeout_ms: int
    ) -> str | None:
        """Record the shared settings if no node is alive, else compare them.

        Returns:
            None when recorded or equal, else the name of the first setting (in the order of
            `settings`) whose value differs from the recorded one (compared as strings).
        """
        args: list[str | int] = [self._keys.prefix, node_timeout_ms]
        for name, value in settings.items():
            args += [name, value]
        differing = await self._scripts.settings(args=args)
        return None if differing is None else _text(differing)

    async def heartbeat(
        self, info: Mapping[str, str], *, joining: bool, node_timeout_ms: int = 10_000
    ) -> Heartbeat:
        """Mark this node alive at Redis's clock now, with its `info` (address, started_at).

        Args:
            joining: this node is starting (being absent from the node list is expected).
            node_timeout_ms: for the count of nodes alive.
        """
        args: list[str | int] = [self._keys.prefix, self.node_id, node_timeout_ms]
        for name, value in info.items():
            args += [name, value]
        now, reaped, alive, missing = await self._scripts.heartbeat(args=args)
        return Heartbeat(
            now_ms=int(now),
            reaped=bool(int(reaped)),
            alive=int(alive),
            missing=bool(int(missing)) and not joining,
        )

    async def nodes_alive(self, node_timeout_ms: int) -> list[str]:
        """The nodes whose last heartbeat is within the timeout, by Redis's clock."""
        nodes = await self._scripts.alive(args=[self._keys.prefix, node_timeout_ms])
        return sorted(_text(node) for node in nodes)

    async def reap(self, *, node_timeout_ms: int, ends_memory_ms: int) -> list[Reaped]:
        """Reap every other node that has not heartbeat within the timeout.

        Exactly one reaper claims each dead node. Its registrations that still name it are
        removed (their ends recorded abnormal; a `gone` entry per session in its room's
        log); those another node took over stay. Returns what was reaped: the sessions
        removed, and (`removed` False) the connections it had lost to a takeover.
        """
        reply = await self._scripts.reap(
            args=[
                self._keys.prefix, self.node_id, node_timeout_ms, ends_memory_ms,
                MAX_HISTORY, ROOM_TTL_MS, LOG_MAX_LEN,
            ]
        )
        reaped = []
        for i in range(0, len(reply), 3):
            key, session_id = _parse_member(_text(reply[i]))
            registration = _parse_registration(session_id, _text(reply[i + 1]))
            reaped.append(Reaped(key, registration, removed=bool(int(reply[i + 2]))))
        return reaped

    # --- sessions ----------------------------------------------------------------------

    async def admit(
        self,
        key: RoomKey,
        *,
        conn: int,
        session_id: int,
        user_id: int | None,
        name: str | None,
        connected_at_ms: int,
        now_ms: int,
        max_contributors: int,
        max_connections: int,
        blocked_memory_ms: int,
        ends_memory_ms: int,
    ) -> Decision:
        """Decide, for the whole cluster at once, whether a session may join the room.

        The rule is `rtc.limits.RoomLimits.reached` over the room's sessions on every node
        (0 = unlimited). The same session of the same user held by another connection (on
        any node) is taken over, with no limit to pass; the same session on the same
        connection is admitted again (idempotent). `now_ms` (this node's clock) is the
        joining time and the reference for the memory windows.
        """
        if max_contributors < 0 or max_connections < 0:
            raise ValueError("limits must be >= 0 (0 = unlimited)")
        contributor = _contributor(session_id, user_id)
        registration = _registration_json(
            self.node_id, conn, contributor, user_id, name, connected_at_ms, now_ms
        )
        reply = await self._scripts.admit(
            keys=self._room_keys(key),
            args=[
                self._keys.prefix, room_member(key), self.node_id, conn, session_id,
                contributor, registration, now_ms, max_contributors, max_connections,
                blocked_memory_ms, ends_memory_ms, MAX_HISTORY, ROOM_TTL_MS, LOG_MAX_LEN,
            ],
        )
        outcome = _text(reply[0])
        if outcome == "conflict":
            return Conflict()
        if outcome == "refused":
            return Refusal(
                limit=int(reply[1]),
                limit_kind=_text(reply[2]),
                contributors=_user_ids(reply[5:]),
                session_count=int(reply[3]),
                first=bool(int(reply[4])),
            )
        previous = _parse_end(reply[2])
        replaced = None
        if reply[3] is not None:
            replaced = (_text(reply[3]), int(reply[4]))
            if previous is None:
                previous = RecentEnd(now_ms, True, None)
        return Admission(
            contributors=_user_ids(reply[5:]),
            session_count=int(reply[1]),
            previous_end=previous,
            replaced=replaced,
        )

    async def leave(
        self,
        key: RoomKey,
        *,
        conn: int,
        session_id: int,
        ended_at_ms: int,
        abnormal: bool,
        clock: int | None,
        ends_memory_ms: int,
    ) -> str:
        """A connection of this node ended; returns what became of its registration.

        Returns:
            "left": it was this connection's: removed, its end recorded (a reconnect within
            `ends_memory_ms` is flagged as one, on any node). "replaced": another
            connection had taken the session over (nothing to record). "gone": a reaper had
            removed it already (it recorded the end).
        """
        end = json.dumps(
            {"ended_at": ended_at_ms, "abnormal": abnormal, "clock": clock},
            separators=(",", ":"),
        )
        outcome = await self._scripts.leave(
            keys=self._room_keys(key),
            args=[
                self._keys.prefix, room_member(key), self.node_id, conn, session_id, end,
                ended_at_ms, ends_memory_ms, MAX_HISTORY, ROOM_TTL_MS,
            ],
        )
        return _text(outcome)

    async def register_all(self, sessions: Iterable[tuple[RoomKey, Registration]]) -> None:
        """(Re)write this node's registrations as they are locally (after Redis came back,
        or came back empty); drop the registrations naming this node that are not given.

        No limit applies (occupants are never evicted); a session another node took over
        meanwhile stays with it. Idempotent.
        """
        args: list[str | int] = [self._keys.prefix, self.node_id, ROOM_TTL_MS, LOG_MAX_LEN]
        for key, registration in sessions:
            if registration.node != self.node_id:
                raise ValueError("register_all takes this node's registrations only")
            contributor = _contributor(registration.session_id, registration.user_id)
            args += [
                room_member(key),
                registration.session_id,
                _registration_json(
                    self.node_id, registration.conn, contributor, registration.user_id,
                    registration.name, registration.connected_at_ms, registration.joined_at_ms,
                ),
                contributor,
            ]
        await self._scripts.register(args=args)

    async def forget_node(self) -> None:
        """At shutdown (after its connections ended): drop this node's remaining
        registrations (with a `gone` entry each) and leave the node list, so that nobody
        needs to reap it."""
        await self.register_all(())
        node = self.node_id
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zrem(self._keys.nodes, node)
            pipe.delete(
                self._keys.node_sessions(node),
                self._keys.node_replaced(node),
                self._keys.node_info(node),
            )
            await pipe.execute()

    # --- reads -------------------------------------------------------------------------

    async def roster(self, key: RoomKey) -> list[Registration]:
        """The room's sessions on every node, by joining time."""
        return _parse_sessions(await self._redis.hgetall(self._keys.sessions(key)))

    async def rooms(self) -> dict[RoomKey, list[Registration]]:
        """Every room with a session, with its sessions (one pipelined round trip)."""
        members = sorted(_text(member) for member in await self._redis.smembers(self._keys.rooms))
        if not members:
            return {}
        keys = [_parse_room(member) for member in members]
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hgetall(self._keys.sessions(key))
            replies = await pipe.execute()
        rooms = {}
        for key, reply in zip(keys, replies, strict=True):
            sessions = _parse_sessions(reply)
            if sessions:
                rooms[key] = sessions
        return rooms

    def _room_keys(self, key: RoomKey) -> list[str]:
        # The order common.lua's given_room expects.
        keys = self._keys
        return [
            keys.sessions(key), keys.contributors(key), keys.ends(key), keys.ends_at(key),
            keys.blocked(key), keys.log(key),
        ]


# --- encoding --------------------------------------------------------------------------


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _contributor(session_id: int, user_id: int | None) -> str:
    # rtc.limits.contributor_key, as a string: an anonymous session counts on its own.
    return f"u:{user_id}" if user_id is not None else f"s:{session_id}"


def _user_ids(contributors: Sequence[Any]) -> tuple[int, ...]:
    return tuple(
        sorted(int(text[2:]) for text in map(_text, contributors) if text.startswith("u:"))
    )


def _registration_json(
    node: str,
    conn: int,
    contributor: str,
    user_id: int | None,
    name: str | None,
    connected_at_ms: int,
    joined_at_ms: int,
) -> str:
    # `ukey` is for the scripts, which read strings only (a Lua number is a double).
    return json.dumps(
        {
            "node": node, "conn": conn, "user": user_id, "name": name,
            "connected_at": connected_at_ms, "joined_at": joined_at_ms, "ukey": contributor,
        },
        separators=(",", ":"),
    )


def _parse_registration(session_id: int, raw: str) -> Registration:
    fields = json.loads(raw)
    return Registration(
        node=fields["node"],
        conn=int(fields["conn"]),
        session_id=session_id,
        user_id=None if fields["user"] is None else int(fields["user"]),
        name=fields["name"],
        connected_at_ms=int(fields["connected_at"]),
        joined_at_ms=int(fields["joined_at"]),
    )


def _parse_sessions(reply: Mapping[Any, Any]) -> list[Registration]:
    sessions = [
        _parse_registration(int(_text(session_id)), _text(raw))
        for session_id, raw in reply.items()
    ]
    return sorted(sessions, key=lambda r: (r.joined_at_ms, r.session_id))


def _parse_end(raw: Any) -> RecentEnd | None:
    if raw is None:
        return None
    fields = json.loads(_text(raw))
    clock = fields.get("clock")
    return RecentEnd(
        int(fields["ended_at"]), bool(fields["abnormal"]), None if clock is None else int(clock)
    )


def _parse_room(member: str) -> RoomKey:
    blog_id, post_id = member.split(":")
    return RoomKey(int(blog_id), int(post_id))


def _parse_member(member: str) -> tuple[RoomKey, int]:
    blog_id, post_id, session_id = member.split(":")
    return RoomKey(int(blog_id), int(post_id)), int(session_id)
