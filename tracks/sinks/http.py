"""`HttpSink`: POSTs each batch as one JSON body to an analytics endpoint, via httpx.

It classifies the answer and nothing more: 2xx is written; connection errors,
timeouts, 408, 429 and 5xx are `TransientError` (with ``Retry-After`` when the
server sent one); 400, 413 and 422 are `UnwritableError` (the backend refused
what it was sent, which may be the fault of one event: the engine splits the
batch to find it), as is a batch the encoder cannot encode; any other status
(401, 403, 404...: the endpoint or its credentials are wrong) is `RejectedError`.
Retrying, backoff, splitting and the outage spool belong to the engine.
"""

from __future__ import annotations

import gzip
import time
from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit, urlunsplit

import httpx

from tracks.encoders import BodyEncoder, GenericEncoder
from tracks.event import Event, json_text
from tracks.retry import parse_retry_after
from tracks.sinks import RejectedError, TransientError, UnwritableError

__all__ = ["HttpSink", "redact_url"]

RETRYABLE_STATUS = frozenset({408, 429})
# What the backend says about the body it was sent (RFC 9110 §15.5.1, .14, .21).
UNWRITABLE_STATUS = frozenset({400, 413, 422})


class HttpSink:
    """Sends batches to ``url``.

    Args:
        url: the endpoint (``http://`` or ``https://``).
        encoder: builds the JSON body from a batch; `GenericEncoder` by default.
        headers: extra request headers (e.g. ``Authorization``).
        gzip: compress bodies (``Content-Encoding: gzip``).
        timeout: seconds for connect, each read and each write.
        transport: an httpx transport, e.g. ``httpx.MockTransport`` in tests.
    """

    def __init__(
        self,
        url: str,
        *,
        encoder: BodyEncoder | None = None,
        headers: Mapping[str, str] | None = None,
        gzip: bool = False,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if urlsplit(url).scheme not in ("http", "https"):
            raise ValueError(f"HttpSink needs an http:// or https:// URL, got {redact_url(url)!r}")
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {timeout}")
        self.url = url
        self.description = redact_url(url)
        self.encoder = encoder or GenericEncoder()
        self.gzip = gzip
        self._headers = {"Content-Type": "application/json", **(headers or {})}
        if gzip:
            self._headers["Content-Encoding"] = "gzip"
        self._timeout = timeout
        self._transport = transport
        self._client: httpx.AsyncClient | None = None

    async def write(self, batch: Sequence[Event]) -> None:
        try:
            body = json_text(self.encoder(batch)).encode()
        except (ValueError, TypeError) as exc:  # UnicodeEncodeError: a lone surrogate
            # The type only: a codec's message quotes the character it choked on.
            raise UnwritableError(
                f"POST {self.description}: cannot encode the batch: {type(exc).__name__}"
            ) from exc
        if self.gzip:
            body = gzip.compress(body, compresslevel=6)
        if self._client is None:
            self._client = httpx.AsyncClient(
                transport=self._transport, timeout=self._timeout, headers=self._headers
            )
        try:
            response = await self._client.post(self.url, content=body)
        except httpx.TransportError as exc:
            # Connection refused, reset, timeouts (httpx.TimeoutException is a TransportError).
            raise TransientError(f"POST {self.description}: {type(exc).__name__}: {exc}") from exc
        status = response.status_code
        if response.is_success:
            return
        message = f"POST {self.description}: HTTP {status}"
        if status in RETRYABLE_STATUS or status >= 500:
            retry_after = parse_retry_after(response.headers.get("Retry-After"), now=time.time())
            raise TransientError(message, retry_after=retry_after)
        if status in UNWRITABLE_STATUS:
            raise UnwritableError(message)
        raise RejectedError(message)

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()


def redact_url(url: str) -> str:
    """The URL without credentials or query string (either may hold an API key)."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port is not None:
        netloc = f"{netloc}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
