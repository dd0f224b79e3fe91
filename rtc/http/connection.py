"""The connection class: one parser per kind of request, one response shape for all.

GET requests go to websockets' own parser (WebSocket upgrades and the GET API: the hot path
stays websockets' alone). websockets parses GET without a body only, so the head of a
connection decides: a request that is not a GET, or a GET with a body, is parsed with h11
(bounded body), handed to the same API as an `HttpRequest`, answered with the same
`Response`, and closed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import h11
from websockets.http11 import Response

from rtc.delivery import DeliveringConnection
from rtc.http.request import HttpRequest
from rtc.http.responses import error_response

__all__ = ["MAX_HEAD", "connection_class", "has_body"]

logger = logging.getLogger(__name__)

MAX_BODY = 1024 * 1024
MAX_HEAD = 16384
"""Bytes of a request head (line and headers) read before deciding who parses it."""


def has_body(head: bytes) -> bool:
    """Whether a GET's head announces a body. websockets refuses such a request by closing
    the connection without an answer (its parser takes no body); h11 reads it instead, and
    the API answers it like any other (a 405 where GET is not taken)."""
    for line in head.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            return True
    return False


Handler = Callable[[HttpRequest], Awaitable[Response]]


def connection_class(handler: Handler, *, max_body: int = MAX_BODY) -> type[DeliveringConnection]:
    """A `DeliveringConnection` subclass that answers non-GET requests with `handler`."""

    websocket_received = DeliveringConnection.data_received
    # Answers being worked out: a task must be referenced until it is done.
    pending: set[asyncio.Future[Response]] = set()

    class Connection(DeliveringConnection):
        _http: h11.Connection | None = None
        _decided = False
        _head = b""
        _request: h11.Request | None = None
        _body: bytearray

        def data_received(self, data: bytes) -> None:
            if self._decided and self._http is None:
                websocket_received(self, data)  # the common case, every frame: keep it short
                return
            if not self._decided:
                self._head += data
                if len(self._head) < 4 and b"GET ".startswith(self._head):
                    return  # not enough to tell yet
                if (self._head.startswith(b"GET ") and b"\r\n\r\n" not in self._head
                        and len(self._head) <= MAX_HEAD):
                    return  # a GET: its whole head tells whether it has a body
                self._decided = True
                data, self._head = self._head, b""
                if not data.startswith(b"GET ") or has_body(data):
                    self._http = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
                    self._body = bytearray()
            if self._http is None:
                super().data_received(data)
                return
            self._plain_received(self._http, data)

        def _plain_received(self, http: h11.Connection, data: bytes) -> None:
            try:
                http.receive_data(data)
                while True:  # bounded by the data received
                    event = http.next_event()
                    if event is h11.NEED_DATA:
                        return
                    if isinstance(event, h11.Request):
                        self._request = event
                    elif isinstance(event, h11.Data):
                        self._body += event.data
                        if len(self._body) > max_body:
                            self._answer(error_response(413, "body too large"))
                            return
                    elif isinstance(event, h11.EndOfMessage):
                        self._dispatch()
                        return
                    else:
                        return
            except h11.RemoteProtocolError as error:
                self._answer(error_response(400, "malformed HTTP request"))
                logger.info("malformed HTTP request: %s", error)

        def _dispatch(self) -> None:
            request = self._request
            if request is None:  # h11 yields a Request before EndOfMessage
                return
            address = self.transport.get_extra_info("peername") if self.transport else None
            plain = HttpRequest(
                method=request.method.decode("ascii", "replace"),
                target=request.target.decode("ascii", "replace"),
                headers={
                    name.decode("latin-1").lower(): value.decode("latin-1")
                    for name, value in request.headers
                },
                body=bytes(self._body),
                client=str(address[0]) if address else "unknown",
            )
            task = asyncio.ensure_future(handler(plain))
            pending.add(task)
            task.add_done_callback(self._answered)

        def _answered(self, task: asyncio.Future[Response]) -> None:
            pending.discard(task)
            if task.cancelled():
                return
            error = task.exception()
            if error is not None:  # the API answers its own failures; this is a last resort
                logger.error("HTTP handler failed", exc_info=error)
                self._answer(error_response(500, "internal error"))
                return
            self._answer(task.result())

        def _answer(self, response: Response) -> None:
            # One request per connection: the response says `Connection: close`, and so do we.
            transport = self.transport
            if self._http is None or transport is None or transport.is_closing():
                return
            transport.write(response.serialize())
            transport.close()

    return Connection

