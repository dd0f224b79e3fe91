"""Open WebSocket connections, counted in total and by client address, for the caps.

The driver counts what it serves; the HTTP API reads the counts to refuse a handshake early.
"""

from __future__ import annotations

from collections import Counter

from websockets.asyncio.server import ServerConnection

__all__ = ["ConnectionCounts", "address_of"]


def address_of(connection: ServerConnection) -> str:
    address = connection.remote_address
    return str(address[0]) if address else "unknown"


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
