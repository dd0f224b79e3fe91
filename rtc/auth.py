"""Tokens: HS256 JWTs signed with the server's secret. Room tokens say which user may edit
which post, until when; scoped tokens (`read`, `admin`) open the server's HTTP API.

No I/O here. A room token carries `blog_id`, `post_id` (or `"*"` for every post of the
blog), `user_id`, `iat`, `exp` and optionally `name`; a scoped token carries `scope`, `iat`
and `exp`. `iat` and `exp` are integers (RFC 7519 NumericDate, whole seconds): a float, a
numeric string or a token without `iat` is refused, and so is one that lives longer than the
server allows (`exp - iat` beyond `max_ttl`). Revocations are the caller's (`rtc.tokens`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import jwt

from rtc.errors import CloseCode, RtcError
from rtc.ids import RoomKey, id_from_json

__all__ = [
    "AuthenticationError",
    "ForbiddenError",
    "Grant",
    "RevokedError",
    "Scope",
    "issue",
    "issue_scoped",
    "read_grant",
    "read_scoped",
    "verify",
    "verify_scoped",
]

ALGORITHM = "HS256"

# Seconds an `iat` may lie ahead of this server's clock (the issuer's clock may run ahead).
CLOCK_SKEW = 5


class AuthenticationError(RtcError):
    """The token is missing, malformed, badly signed, expired or lives too long."""

    close_code = CloseCode.AUTHENTICATION_FAILED
    reason = "authentication-failed"
    error_code = "authentication-failed"


class ForbiddenError(RtcError):
    """The token is valid, but for another room (or not for this part of the API)."""

    close_code = CloseCode.FORBIDDEN
    reason = "forbidden"
    error_code = "forbidden"


class RevokedError(ForbiddenError):
    """The token was issued before its user was kicked from the room."""

    reason = "revoked"
    error_code = "revoked"


class Scope(StrEnum):
    """What a scoped token opens: `read` (rosters, feeds, timelines, stats, metrics) or
    `admin` (all of that, plus kick and capture control)."""

    READ = "read"
    ADMIN = "admin"

    def covers(self, needed: Scope) -> bool:
        return self is Scope.ADMIN or needed is Scope.READ


@dataclass(frozen=True, slots=True)
class Grant:
    """What a verified room token allows.

    Attributes:
        blog_id: the blog.
        post_id: the post, or None for every post of the blog.
        user_id: the WordPress user: the roster identity of the connection.
        name: the display name, if the token has one.
        expires_at: seconds since the epoch after which the connection is closed.
        issued_at: seconds since the epoch when the token was made (its `iat`).
    """

    blog_id: int
    post_id: int | None
    user_id: int
    name: str | None
    expires_at: float
    issued_at: int

    def allows(self, key: RoomKey) -> bool:
        return self.blog_id == key.blog_id and self.post_id in (None, key.post_id)


def _positive_int(claims: dict[str, Any], name: str) -> int:
    value = id_from_json(claims.get(name), digits=True)
    if value is None:
        raise AuthenticationError(f"claim {name!r} must be a positive integer below 2**63")
    return value


def _decode(token: str | None, secret: str, required: list[str], now: float) -> dict[str, Any]:
    if not token:
        raise AuthenticationError("no token")
    try:
        # `iat` and `exp` are checked in `_lifetime`, stricter than PyJWT and on our clock.
        claims: dict[str, Any] = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            options={"require": required, "verify_iat": False, "verify_exp": False},
            leeway=0,
        )
    except jwt.PyJWTError as error:
        raise AuthenticationError(f"invalid token: {error}") from None
    return claims


def _lifetime(claims: dict[str, Any], now: float, max_ttl: float | None) -> tuple[int, int]:
    """`(iat, exp)`, both integers, `iat` not ahead of the clock, `exp` not past it, and the
    span between them within `max_ttl`."""
    issued, expires = claims["iat"], claims["exp"]
    # PyJWT takes int(exp): 1e18 and "32503680000" would pass it. NumericDate here is an int.
    for name, value in (("iat", issued), ("exp", expires)):
        if type(value) is not int:
            raise AuthenticationError(f"claim {name!r} must be an integer (seconds)")
    if issued > now + CLOCK_SKEW:
        raise AuthenticationError("token issued in the future (iat)")
    if expires <= now:
        raise AuthenticationError("token expired")
    if max_ttl is not None and expires - issued > max_ttl:
        raise AuthenticationError(
            f"token lives {expires - issued} s, longer than the server allows ({max_ttl:g} s)"
        )
    return issued, expires


def read_grant(
    token: str | None, secret: str, *, now: float | None = None, max_ttl: float | None = None
) -> Grant:
    """Check a room token's signature and claims, whatever room it is for.

    Raises:
        AuthenticationError: missing, malformed, badly signed, expired, without an integer
            `iat`/`exp`, living longer than `max_ttl`, or missing claims.
    """
    clock = time.time() if now is None else now
    claims = _decode(token, secret, ["exp", "iat", "blog_id", "post_id", "user_id"], clock)
    if "scope" in claims:
        raise AuthenticationError("a scoped token is not a room token")
    issued, expires = _lifetime(claims, clock, max_ttl)
    post_claim = claims.get("post_id")
    name = claims.get("name")
    return Grant(
        blog_id=_positive_int(claims, "blog_id"),
        post_id=None if post_claim == "*" else _positive_int(claims, "post_id"),
        user_id=_positive_int(claims, "user_id"),
        name=name if isinstance(name, str) else None,
        expires_at=float(expires),
        issued_at=issued,
    )


def verify(
    token: str | None,
    secret: str,
    key: RoomKey,
    *,
    now: float | None = None,
    max_ttl: float | None = None,
) -> Grant:
    """Check a room token for a room.

    Raises:
        AuthenticationError: see `read_grant`.
        ForbiddenError: valid, but not for this room.
    """
    grant = read_grant(token, secret, now=now, max_ttl=max_ttl)
    if not grant.allows(key):
        post = "*" if grant.post_id is None else grant.post_id
        raise ForbiddenError(f"token is for blog {grant.blog_id} post {post}")
    return grant


def verify_scoped(
    token: str | None, secret: str, *, now: float | None = None, max_ttl: float | None = None
) -> Scope:
    """Check a scoped (API) token; its scope.

    Raises:
        AuthenticationError: missing, malformed, badly signed, expired, without an integer
            `iat`/`exp`, living longer than `max_ttl`, or not a scoped token.
    """
    return read_scoped(token, secret, now=now, max_ttl=max_ttl)[0]


def read_scoped(
    token: str | None, secret: str, *, now: float | None = None, max_ttl: float | None = None
) -> tuple[Scope, float]:
    """Check a scoped (API) token; its scope and when it expires (seconds since the epoch).

    Raises:
        AuthenticationError: as `verify_scoped`.
    """
    clock = time.time() if now is None else now
    claims = _decode(token, secret, ["exp", "iat", "scope"], clock)
    _, expires = _lifetime(claims, clock, max_ttl)
    try:
        return Scope(claims["scope"]), float(expires)
    except (ValueError, TypeError):
        raise AuthenticationError("claim 'scope' must be 'read' or 'admin'") from None


def _timestamps(ttl_seconds: float, now: float | None) -> dict[str, object]:
    if not ttl_seconds > 0:
        raise ValueError("ttl_seconds must be > 0")
    issued = time.time() if now is None else now
    return {"iat": int(issued), "exp": int(issued + ttl_seconds)}


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
    """Make a room token (for integrators, the demo and tests). `post_id=None`: every post."""
    claims: dict[str, object] = {
        "blog_id": blog_id,
        "post_id": "*" if post_id is None else post_id,
        "user_id": user_id,
        **_timestamps(ttl_seconds, now),
    }
    if name is not None:
        claims["name"] = name
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def issue_scoped(
    secret: str, *, scope: Scope | str, ttl_seconds: float, now: float | None = None
) -> str:
    """Make a scoped token for the HTTP API (`rtc token --scope read|admin`)."""
    claims = {"scope": Scope(scope).value, **_timestamps(ttl_seconds, now)}
    return jwt.encode(claims, secret, algorithm=ALGORITHM)
