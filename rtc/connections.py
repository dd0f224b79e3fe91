"""Open WebSocket connections, counted in total and by client address, for the caps.

The driver counts what it serves; the HTTP API reads the counts to refuse a handshake early.
Both ask `address_of` who the client is, so that a count and its cap agree (behind trusted
proxies: who they forward for, rtc.forwarded).
"""

from __future__ import annotations

from collections import Counter

from websockets.asyncio.server import ServerConnection

from rtc.forwarded import NO_PROXIES, TrustedProxies, client_address

__all__ = ["ConnectionCounts", "address_of"]


def address_of(connection: ServerConnection, proxies: TrustedProxies = NO_PROXIES) -> str:
    """A connection's client address: its peer's, or, when the peer is a trusted proxy, the
    client it forwards for (`X-Forwarded-For` or `Forwarded` of the handshake request).

    Args:
        connection: a connection whose handshake request has been read.
        proxies: the trusted proxies (`--forwarded-allow-ips`); by default none.
    """
    address = connection.remote_address
    peer = str(address[0]) if address else "unknown"
    request = connection.request
    headers = request.headers.raw_items() if request is not None else ()
    return client_address(peer, headers, proxies)


class ConnectionCounts:
    """Open WebSocket connections, in total and by client address (in memory only)."""

    def __init__(self) -> None:
        self.total = 0
        self.by_address: Counter[str] = Counter()

    def opened(self, address: str) -> None:
        self.total += 1
        self.by_address[address] += 1

    def closed(self, address: str) -> None:
        self.total -= 1
        self.by_address[address] -= 1
        if not self.by_address[address]:
            del self.by_address[address]
