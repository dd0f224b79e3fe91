"""`HttpError`: a request refused with its HTTP status. No I/O here."""

from __future__ import annotations

__all__ = ["HttpError"]


class HttpError(Exception):
    """A request refused with an HTTP status and a one-line message (the JSON error body).

    Attributes:
        status: the HTTP status.
        message: the one line the client reads in ``{"error": message, "status": status}``.
        headers: headers the answer must carry (``Allow`` with a 405).
    """

    def __init__(self, status: int, message: str, *, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
