"""Room tokens: HS256 JWTs that say which user may edit which post, until when.

No I/O here. A token carries `blog_id`, `post_id` (or `"*"` for every post of the blog),
`user_id`, `exp` and optionally `name`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import jwt

from rtc.errors import CloseCode, RtcError
from rtc.ids import RoomKey, id_from_json

__all__ = [
    "AuthenticationError",
    "ForbiddenError",
    "Grant",
    "TokenCheck",
    "issue",
    "verify",
]

ALGORITHM = "HS256"


class AuthenticationError(RtcError):
    """The token is missing, malformed, badly signed or expired."""

    close_code = CloseCode.AUTHENTICATION_FAILED
    reason = "authentication-failed"
    error_code = "authentication-failed"


class ForbiddenError(RtcError):
    """The token is valid, but for another room."""

    close_code = CloseCode.FORBIDDEN
    reason = "forbidden"
    error_code = "forbidden"


@dataclass(frozen=True, slots=True)
class Grant:
    """What a verified token allows.

    Attributes:
        blog_id: the blog.
        post_id: the post, or None for every post of the blog.
        user_id: the WordPress user: the roster identity of the connection.
        name: the display name, if the token has one.
        expires_at: seconds since the epoch after which the connection is closed.
    """

    blog_id: int
    post_id: int | None
    user_id: int
    name: str | None
    expires_at: float

    def allows(self, key: RoomKey) -> bool:
        return self.blog_id == key.blog_id and self.post_id in (None, key.post_id)


def _positive_int(claims: dict[str, object], name: str) -> int:
    value = id_from_json(claims.get(name), digits=True)
    if value is None:
        raise AuthenticationError(f"claim {name!r} must be a positive integer below 2**63")
    return value


TokenCheck = Callable[[str | None, RoomKey], "Grant"]
"""Checks a connection's token for a room: its grant, or AuthenticationError/ForbiddenError."""


def verify(token: str | None, secret: str, key: RoomKey, *, now: float | None = None) -> Grant:
    """Check a token for a room.

    Raises:
        AuthenticationError: missing, malformed, badly signed, expired, or missing claims.
        ForbiddenError: valid, but not for this room.
    """
    if not token:
        raise AuthenticationError("no token")
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            options={"require": ["exp", "blog_id", "post_id", "user_id"]},
            leeway=0,
        )
    except jwt.ExpiredSignatureError:
        raise AuthenticationError("token expired") from None
    except jwt.PyJWTError as error:
        raise AuthenticationError(f"invalid token: {error}") from None
    post_claim = claims.get("post_id")
    post_id = None if post_claim == "*" else _positive_int(claims, "post_id")
    name = claims.get("name")
    grant = Grant(
        blog_id=_positive_int(claims, "blog_id"),
        post_id=post_id,
        user_id=_positive_int(claims, "user_id"),
        name=name if isinstance(name, str) else None,
        expires_at=float(claims["exp"]),
    )
    if now is not None and grant.expires_at <= now:
        raise AuthenticationError("token expired")
    if not grant.allows(key):
        raise ForbiddenError(f"token is for blog {grant.blog_id} post {post_claim}")
    return grant


def issue(
    secret: str,
    *,
    blog_id: int,
    post_id: int | None,
    user_id: int,
    ttl_seconds: float,
    name: str | None = None,
    now: float | None = None,
) -> str:
    """Make a token (for integrators, the demo and tests). `post_id=None` means every post."""
    if ttl_seconds <= 0:
        raise ValueError("ttl_seconds must be > 0")
    issued = time.time() if now is None else now
    claims: dict[str, object] = {
        "blog_id": blog_id,
        "post_id": "*" if post_id is None else post_id,
        "user_id": user_id,
        "iat": int(issued),
        "exp": int(issued + ttl_seconds),
    }
    if name is not None:
        claims["name"] = name
    return jwt.encode(claims, secret, algorithm=ALGORITHM)
