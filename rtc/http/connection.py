"""The connection class: GET requests go to websockets (upgrades and the GET API); other
methods (POST, OPTIONS) are answered here, because websockets' HTTP parser takes GET only.

The first bytes of a connection decide: a request line that does not start with `GET ` is
parsed with h11 (bounded body), handed to a synchronous handler, answered, and closed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import h11

from rtc.delivery import DeliveringConnection

__all__ = ["PlainRequest", "PlainResponse", "connection_class"]

logger = logging.getLogger(__name__)

MAX_BODY = 1024 * 1024


@dataclass(frozen=True, slots=True)
class PlainRequest:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    remote_address: str


@dataclass(frozen=True, slots=True)
class PlainResponse:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[PlainRequest], PlainResponse]


def connection_class(handler: Handler, *, max_body: int = MAX_BODY) -> type[DeliveringConnection]:
    """A `DeliveringConnection` subclass that answers non-GET requests with `handler`."""

    websocket_received = DeliveringConnection.data_received

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
                self._decided = True
                data, self._head = self._head, b""
                if not data.startswith(b"GET "):
                    self._http = h11.Connection(h11.SERVER, max_incomplete_event_size=16384)
                    self._body = bytearray()
            if self._http is None:
                super().data_received(data)
                return
            self._plain_received(data)

        def _plain_received(self, data: bytes) -> None:
            http = self._http
            assert http is not None
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
                            self._answer(PlainResponse(413, b'{"error":"body too large"}'))
                            return
                    elif isinstance(event, h11.EndOfMessage):
                        self._dispatch()
                        return
                    else:
                        return
            except h11.RemoteProtocolError as error:
                self._answer(PlainResponse(400, b'{"error":"malformed HTTP request"}'))
                logger.info("malformed HTTP request: %s", error)

        def _dispatch(self) -> None:
            request = self._request
            assert request is not None
            address = self.transport.get_extra_info("peername") if self.transport else None
            plain = PlainRequest(
                method=request.method.decode("ascii", "replace"),
                target=request.target.decode("ascii", "replace"),
                headers={
                    name.decode("latin-1").lower(): value.decode("latin-1")
                    for name, value in request.headers
                },
                body=bytes(self._body),
                remote_address=str(address[0]) if address else "unknown",
            )
            try:
                response = handler(plain)
            except Exception:
                logger.exception("HTTP %s %s failed", plain.method, plain.target)
                response = PlainResponse(500, b'{"error":"internal error"}')
            self._answer(response)

        def _answer(self, response: PlainResponse) -> None:
            http = self._http
            transport = self.transport
            if http is None or transport is None or transport.is_closing():
                return
            headers: list[tuple[str, str]] = [
                ("Content-Type", response.content_type),
                ("Content-Length", str(len(response.body))),
                ("Connection", "close"),
                ("Cache-Control", "no-store"),
                *response.headers.items(),
            ]
            if http.our_state is h11.SEND_RESPONSE:
                head = http.send(h11.Response(status_code=response.status, headers=headers))
            else:
                head = _head(response.status, headers)  # a request h11 could not even parse
            transport.write((head or b"") + response.body)
            transport.close()

    return Connection


def _head(status: int, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status} \r\n"] + [f"{name}: {value}\r\n" for name, value in headers]
    return ("".join(lines) + "\r\n").encode("latin-1")
