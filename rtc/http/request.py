"""`HttpRequest`: one request, whichever parser read it (websockets for GET, h11 otherwise).

No I/O here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

from rtc.http.errors import HttpError

__all__ = ["MAX_DEPTH", "HttpRequest", "parse_json"]

MAX_DEPTH = 32


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def parse_json(body: bytes, *, max_depth: int = MAX_DEPTH) -> object:
    """A body as JSON: strict (no NaN or Infinity), nested at most `max_depth` deep.

    Deep nesting is refused here, once, so that nothing downstream (recursive validation,
    `json.dumps`, logging) can hit the recursion limit on what a client sent.

    Raises:
        ValueError: not JSON, not UTF-8, or nested deeper than `max_depth`.
    """
    try:
        value = json.loads(body, parse_constant=_no_constant)
    except RecursionError:
        # json's C scanner counts its depth against the recursion limit (about 1,000).
        raise ValueError(f"nested deeper than {max_depth}") from None
    except UnicodeDecodeError:
        raise ValueError("not UTF-8") from None
    pending: list[tuple[object, int]] = [(value, 1)]
    while pending:  # iterative: a recursive walk would meet the very limit it guards
        item, depth = pending.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(
            item, list) else ()
        for child in children:
            if isinstance(child, dict | list):
                if depth >= max_depth:
                    raise ValueError(f"nested deeper than {max_depth}")
                pending.append((child, depth + 1))
    return value


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

    def json(self, *, max_depth: int = MAX_DEPTH) -> object:
        """The body as JSON (see `parse_json`).

        Raises:
            HttpError: 400 when it is not.
        """
        try:
            return parse_json(self.body, max_depth=max_depth)
        except ValueError as error:
            raise HttpError(400, f"body is not JSON: {error}") from None

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def bearer(self) -> str | None:
        """The credential of an ``Authorization: Bearer …`` header."""
        scheme, _, value = (self.header("authorization") or "").strip().partition(" ")
        if scheme.lower() != "bearer":
            return None
        return value.strip() or None
