"""The server's token rules in one object: signature and claims (`rtc.auth`), the longest
lifetime it accepts (`--max-token-ttl`), and kicks (`rtc.revocations`).

`TokenChecker` is what the driver calls on every room connection and
what the HTTP API asks about rosters, feeds, timelines, client events and the admin API.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from rtc.auth import (
    AuthenticationError,
    ForbiddenError,
    Grant,
    RevokedError,
    Scope,
    read_grant,
    read_scoped,
    verify_scoped,
)
from rtc.ids import RoomKey
from rtc.revocations import Revocations

__all__ = ["TokenChecker"]

logger = logging.getLogger(__name__)


class TokenChecker:
    """Checks room and scoped tokens against the secret, the lifetime cap and the kicks.

    Args:
        secret: the HS256 secret tokens are signed with.
        max_ttl: seconds a token may live from `iat` to `exp`; longer-lived ones are refused.
        revocations: the kicks; a token issued at or before its user's kick from a room is
            refused for that room.
        clock: seconds since the epoch.
    """

    def __init__(
        self,
        secret: str,
        *,
        max_ttl: float,
        revocations: Revocations,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not max_ttl > 0:
            raise ValueError("max_ttl must be > 0")
        self._secret = secret
        self._max_ttl = max_ttl
        self._revocations = revocations
        self._clock = clock

    def __call__(self, token: str | None, key: RoomKey) -> Grant:
        """A room token's grant for `key` (what the driver asks on every room connection).

        Raises:
            AuthenticationError: not a valid room token (see `rtc.auth.read_grant`).
            ForbiddenError: valid, but for another room; `RevokedError` after a kick.
        """
        grant = self.grant(token)
        self.admit(grant, key)
        return grant

    def grant(self, token: str | None) -> Grant:
        """A room token's grant, whichever room it is for (raises AuthenticationError)."""
        return read_grant(token, self._secret, now=self._clock(), max_ttl=self._max_ttl)

    def admit(self, grant: Grant, key: RoomKey) -> None:
        """Whether `grant` opens room `key` now.

        Raises:
            ForbiddenError: for another room; `RevokedError` when issued before a kick.
        """
        if not grant.allows(key):
            post = "*" if grant.post_id is None else grant.post_id
            raise ForbiddenError(f"token is for blog {grant.blog_id} post {post}")
        revoked_at = self._revocations.revoked_at(key, grant.user_id)
        if revoked_at is not None and grant.issued_at <= revoked_at:
            raise RevokedError(f"user {grant.user_id} was kicked from {key}")

    def scope(self, token: str | None) -> Scope:
        """A scoped token's scope (raises AuthenticationError)."""
        return verify_scoped(token, self._secret, now=self._clock(), max_ttl=self._max_ttl)

    def holder(self, token: str | None) -> tuple[float, int | None]:
        """When a valid credential (a room token or an API token) expires, and whose it is
        (the user of a room token; None for an API token). Raises AuthenticationError."""
        try:
            grant = self.grant(token)
        except AuthenticationError:
            _, expires = read_scoped(
                token, self._secret, now=self._clock(), max_ttl=self._max_ttl
            )
            return expires, None
        return grant.expires_at, grant.user_id

    @property
    def revocations(self) -> Revocations:
        return self._revocations

    def revoke(self, key: RoomKey, user_id: int) -> int:
        """Refuse, from now on, the user's tokens for the room issued up to this second.

        Persisted before it returns (raises OSError when it could not be).

        Returns:
            The second of the kick (tokens issued at or before it are refused).
        """
        now = self._clock()
        self._revocations.revoke(key, user_id, now=now)
        logger.info("room %s: tokens of user %d issued until now are revoked", key, user_id)
        return int(now)
