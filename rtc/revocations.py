"""Revocations: which users were kicked from which rooms, and when; persisted.

A kick revokes every token its user holds for that room issued at or before the second of
the kick (`iat <= revoked_at`): the admin's "permissions changed" holds across reconnects and
restarts. An entry is kept as long as a token issued before it could still be alive
(`keep_seconds`, the server's longest token lifetime), then forgotten. The entries live in
one small JSON file, rewritten atomically on each kick (written, fsynced, renamed). In cluster
mode the kicks are shared through Redis too (`rtc.cluster.controls`), which hands every
node's kicks to `share`: a token kicked on one node is refused on all.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

from rtc.ids import RoomKey, id_from_text

__all__ = ["Revocations"]

logger = logging.getLogger(__name__)


class Revocations:
    """Kicks remembered per room and user, loaded from and saved to `path`.

    Args:
        path: the JSON file (`{"blog/post": {"user_id": revoked_at}}`).
        keep_seconds: how long an entry matters: tokens live at most this long.

    Raises:
        ValueError: the file exists but is not a revocation file.
    """

    def __init__(self, path: Path, *, keep_seconds: float) -> None:
        if not keep_seconds > 0:
            raise ValueError("keep_seconds must be > 0")
        self.path = path
        self._keep = keep_seconds
        self._revoked: dict[tuple[RoomKey, int], int] = {}
        self._shared: dict[tuple[RoomKey, int], int] = {}
        if path.exists():
            try:
                self._revoked = _parse(json.loads(path.read_text(encoding="utf-8")))
            except (ValueError, TypeError, AttributeError) as error:
                raise ValueError(f"{path}: unreadable revocations: {error}") from None

    def __len__(self) -> int:
        return len(self._revoked)

    @property
    def keep_seconds(self) -> float:
        return self._keep

    def revoked_at(self, key: RoomKey, user_id: int) -> int | None:
        """The second of the user's last kick from the room (here or, in a cluster, on any
        node), if any."""
        local = self._revoked.get((key, user_id))
        shared = self._shared.get((key, user_id))
        if local is None or shared is None:
            return shared if local is None else local
        return max(local, shared)

    def share(self, kicks: dict[tuple[RoomKey, int], int]) -> None:
        """Take the cluster's kicks (room and user -> second) as known, besides this node's
        own; not persisted here (Redis keeps them)."""
        self._shared = dict(kicks)

    def revoke(self, key: RoomKey, user_id: int, *, now: float) -> None:
        """Revoke the user's tokens for the room issued up to now; persisted before returning.

        Raises:
            OSError: the file could not be written (nothing changed then).
        """
        revoked = {
            entry: at for entry, at in self._revoked.items() if at + self._keep >= now
        }
        revoked[key, user_id] = int(now)
        payload: dict[str, dict[str, int]] = {}
        for (room, user), at in sorted(revoked.items()):
            payload.setdefault(str(room), {})[str(user)] = at
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(
            "w", dir=self.path.parent, prefix=".revocations-", delete=False, encoding="utf-8"
        ) as handle:
            json.dump(payload, handle, separators=(",", ":"))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, self.path)
        self._revoked = revoked


def _parse(raw: object) -> dict[tuple[RoomKey, int], int]:
    if not isinstance(raw, dict):
        raise ValueError("not an object")
    parsed: dict[tuple[RoomKey, int], int] = {}
    for room, users in raw.items():
        blog, _, post = str(room).partition("/")
        blog_id, post_id = id_from_text(blog), id_from_text(post)
        if blog_id is None or post_id is None or not isinstance(users, dict):
            raise ValueError(f"bad entry {room!r}")
        for user, at in users.items():
            user_id = id_from_text(str(user))
            if user_id is None or type(at) is not int:
                raise ValueError(f"bad entry {room!r}: {user!r}")
            parsed[RoomKey(blog_id, post_id), user_id] = at
    return parsed
