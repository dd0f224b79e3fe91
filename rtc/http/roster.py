"""The JSON of rooms and their live rosters: this node's loaded rooms, or (in cluster mode)
the cluster's shared roster, in one shape. No I/O here."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from rtc.cluster.outcomes import Registration
from rtc.ids import RoomKey
from rtc.limits import ContributorKey, contributor_key
from rtc.room import Room

__all__ = [
    "cluster_room_json", "cluster_rooms_json", "room_json", "rooms_json", "user_ids",
]


def rooms_json(rooms: Iterable[Room]) -> dict[str, object]:
    """`GET /api/rooms`: each loaded room with its session and contributor counts."""
    return {
        "rooms": [
            {
                "blog_id": room.key.blog_id,
                "post_id": room.key.post_id,
                "session_count": room.session_count,
                "contributor_count": len(room.contributor_ids()),
            }
            for room in sorted(rooms, key=lambda room: room.key)
        ]
    }


def room_json(key: RoomKey, room: Room | None) -> dict[str, object]:
    """The live roster of a room (empty when it is not loaded)."""
    contributors = []
    sessions = 0
    if room is not None:
        sessions = room.session_count
        for contributor in room.roster():
            entry: dict[str, object] = {}
            if contributor.user_id is not None:
                entry["id"] = contributor.user_id
            if contributor.name is not None:
                entry["name"] = contributor.name
            entry["sessions"] = [
                {"session_id": s.session_id, "connected_since": s.connected_at_ms}
                for s in contributor.sessions
            ]
            contributors.append(entry)
    return {
        "blog_id": key.blog_id,
        "post_id": key.post_id,
        "loaded": room is not None,
        "session_count": sessions,
        "contributor_count": len(room.contributor_ids()) if room is not None else 0,
        "contributors": contributors,
    }


# --- cluster mode: the same answers from the shared roster ------------------------------


def cluster_rooms_json(rooms: Mapping[RoomKey, Sequence[Registration]]) -> dict[str, object]:
    """`GET /api/rooms` in cluster mode: each room with a session somewhere in the cluster."""
    return {
        "rooms": [
            {
                "blog_id": key.blog_id,
                "post_id": key.post_id,
                "session_count": len(sessions),
                "contributor_count": len(user_ids(sessions)),
            }
            for key, sessions in sorted(rooms.items())
            if sessions
        ]
    }


def cluster_room_json(key: RoomKey, sessions: Sequence[Registration]) -> dict[str, object]:
    """`GET /api/rooms/{b}/{p}` in cluster mode: `room_json`'s shape, each session with the
    node that serves it; `loaded` means "has sessions somewhere in the cluster"."""
    contributors = []
    for group in _contributors(sessions):
        entry: dict[str, object] = {}
        if group[0].user_id is not None:
            entry["id"] = group[0].user_id
        name = group[-1].name  # the latest session's name, as `Room.roster` takes it
        if name is not None:
            entry["name"] = name
        entry["sessions"] = [
            {"session_id": s.session_id, "connected_since": s.connected_at_ms, "node": s.node}
            for s in group
        ]
        contributors.append(entry)
    return {
        "blog_id": key.blog_id,
        "post_id": key.post_id,
        "loaded": bool(sessions),
        "session_count": len(sessions),
        "contributor_count": len(user_ids(sessions)),
        "contributors": contributors,
    }


def user_ids(sessions: Iterable[Registration]) -> tuple[int, ...]:
    """Sorted distinct user ids of these sessions (anonymous ones are not contributors)."""
    return tuple(sorted({s.user_id for s in sessions if s.user_id is not None}))


def _contributors(sessions: Sequence[Registration]) -> list[list[Registration]]:
    # `Room.roster`'s rule: a user's sessions together (an anonymous session alone), by
    # joining time; users by id, anonymous sessions last.
    groups: dict[ContributorKey, list[Registration]] = {}
    for s in sorted(sessions, key=lambda s: (s.joined_at_ms, s.session_id)):
        groups.setdefault(contributor_key(s.session_id, s.user_id), []).append(s)
    return sorted(
        groups.values(),
        key=lambda group: (group[0].user_id is None, group[0].user_id or 0, group[0].session_id),
    )
