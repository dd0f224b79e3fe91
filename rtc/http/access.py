"""Who may read and change what over HTTP, when the server runs with `--secret`.

A room token (`?token=` or `Authorization: Bearer`) opens that room's roster, live feed and
session timelines; a scoped token (`rtc token --scope read|admin`) opens every room's, the
stats and the metrics; `admin` alone opens kick and capture control. Without a secret the
server is open: every read is allowed and the admin API is refused.
"""

from __future__ import annotations

from rtc.auth import AuthenticationError, Scope
from rtc.errors import RtcError
from rtc.http.errors import HttpError
from rtc.http.request import HttpRequest
from rtc.ids import RoomKey
from rtc.tokens import TokenChecker

__all__ = ["Access", "credential"]

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="rtc"'}


def credential(request: HttpRequest) -> str | None:
    """The request's token: `Authorization: Bearer …`, else `?token=` (for what a browser
    cannot give headers to: a WebSocket, a link)."""
    return request.bearer() or request.query("token")


class Access:
    """Answers "may this request do that?" by raising `HttpError` (401, 403) when not.

    Args:
        tokens: the token rules; None when the server runs open.
    """

    def __init__(self, tokens: TokenChecker | None) -> None:
        self._tokens = tokens

    @property
    def closed(self) -> bool:
        """Whether reads need a credential (the server has a secret)."""
        return self._tokens is not None

    def scope(self, request: HttpRequest, needed: Scope) -> None:
        """Require a scoped token covering `needed` (open servers: reads pass, admin is 403).

        Raises:
            HttpError: 401 without a valid scoped token, 403 with one too weak (or, on an
                open server, for the admin API).
        """
        tokens = self._tokens
        if tokens is None:
            if needed is Scope.ADMIN:
                raise HttpError(403, "the admin API needs the server to run with --secret")
            return
        try:
            scope = tokens.scope(credential(request))
        except RtcError as error:
            raise HttpError(
                401, f"a {needed} token is required (rtc token --scope {needed}): {error.detail}",
                headers=_CHALLENGE,
            ) from None
        if not scope.covers(needed):
            raise HttpError(403, f"this needs an {needed} token, not a {scope} one")

    def room(self, request: HttpRequest, key: RoomKey, token: str | None = None) -> None:
        """Require a room token for `key`, or a read (or admin) token.

        Args:
            request: the request.
            key: the room read.
            token: the credential when the route already read it; else the request's.

        Raises:
            HttpError: 401 without a valid token, 403 for another room or after a kick.
        """
        tokens = self._tokens
        if tokens is None:
            return
        given = token or credential(request)
        try:
            scope = tokens.scope(given)
        except RtcError:
            pass  # not a scoped token: a room token, then
        else:
            if scope.covers(Scope.READ):
                return
        try:
            tokens(given, key)
        except RtcError as error:
            status = 401 if isinstance(error, AuthenticationError) else 403
            raise HttpError(
                status, f"a token for room {key} is required: {error.detail}",
                headers=_CHALLENGE if status == 401 else None,
            ) from None
