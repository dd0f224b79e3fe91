"""`HttpRequest`: one request, whichever parser read it (websockets for GET, h11 otherwise).

No I/O here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["HttpRequest"]


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpRequest:
    """A request as the handlers see it.

    Attributes:
        method: ``GET``, ``POST``, ...
        target: the request target as sent (path and query).
        headers: header values by lower-case name (the last one when repeated).
        body: the request body (empty for GET).
        client: the client's address.
    """

    method: str
    target: str
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    client: str = "unknown"

    @property
    def path(self) -> str:
        """The decoded path, without the query."""
        return unquote(urlsplit(self.target).path)

    def query(self, name: str) -> str | None:
        """A query parameter's last value, or None when absent or empty."""
        values = parse_qs(urlsplit(self.target).query).get(name)
        return values[-1] if values and values[-1] else None

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def bearer(self) -> str | None:
        """The credential of an ``Authorization: Bearer …`` header."""
        value = (self.header("authorization") or "").removeprefix("Bearer ").strip()
        return value or None
