"""The JSON of loaded rooms and their live rosters. No I/O here."""

from __future__ import annotations

from collections.abc import Iterable

from rtc.ids import RoomKey
from rtc.room import Room

__all__ = ["room_json", "rooms_json"]


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
