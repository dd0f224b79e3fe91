"""What one connection's traffic costs, and the allowance it is charged against.

No I/O here; time is passed in. A message costs by what the server does with it: a
document or presence change 1, an awareness entry it only reads past a twentieth (a
y-websocket echo: most of a busy room's traffic), a ping or pong 1 (websockets answers
pings on its own, so they cost CPU like any message). Bytes are charged separately,
against their own allowance, so that a few huge messages cost what they weigh.
"""

from __future__ import annotations

from typing import Literal

from rtc.errors import RateLimitedError
from rtc.protocol import awareness_header
from rtc.ratelimit import TokenBucket

__all__ = [
    "CONTROL_COST",
    "ENTRY_COST",
    "Budget",
    "Exhausted",
    "OverBudgetError",
    "awareness_entries",
    "entries_cost",
    "message_cost",
]

ENTRY_COST = 0.05  # one awareness entry read past (an echo): a twentieth of a message
CONTROL_COST = 1.0  # a ping or pong frame

Exhausted = Literal["messages", "bytes"]


class OverBudgetError(RateLimitedError):
    """A connection spent more than its allowance (1008 rate-limited)."""

    def __init__(self, exhausted: Exhausted, detail: str) -> None:
        super().__init__(detail)
        self.exhausted = exhausted


def message_cost(data: bytes, *, max_entries: int) -> float:
    """What a message costs before it is read: 1, or an awareness message's entries at
    `ENTRY_COST` each (counted up to one past `max_entries`, which the room refuses)."""
    entries = awareness_entries(data)
    return 1.0 if entries is None else entries_cost(entries, max_entries=max_entries)


def entries_cost(entries: int, *, max_entries: int) -> float:
    """What an awareness message of `entries` entries costs (see `message_cost`)."""
    return ENTRY_COST * min(max(entries, 1), max_entries + 1)


def awareness_entries(data: bytes) -> int | None:
    """How many entries an awareness message says it carries (None: not awareness).

    Reads the header only, so a message that lists 10,000 clients is priced (and refused)
    before any of them is parsed. A malformed header counts as one entry: the full decode
    refuses it.
    """
    header = awareness_header(data)
    return None if header is None else header[0]


class Budget:
    """A connection's allowance: messages (weighted by cost) and bytes, each per second and in
    a burst.

    Bytes may be overdrawn by one message: a message of up to the frame limit passes when the
    allowance is not spent, and the allowance then has to refill before the next one (a
    message that comes while it is still spent closes the connection). So `byte_burst`
    bounds what a flood gets through, not the largest message.

    Args:
        messages_per_second: sustained message allowance.
        message_burst: messages at once.
        bytes_per_second: sustained byte allowance.
        byte_burst: bytes at once.
        outbox_limit: what a peer's outbox holds: the byte burst is at most half of it, or
            one sender's flood would close its honest peers (1013 outbox-full) before the
            sender itself is closed.
        now: the current time in seconds.
    """

    __slots__ = ("_bytes", "_messages")


    def __init__(
        self,
        *,
        messages_per_second: float,
        message_burst: float,
        bytes_per_second: float,
        byte_burst: float,
        outbox_limit: int,
        now: float,
    ) -> None:
        self._messages = TokenBucket(messages_per_second, message_burst, now)
        self._bytes = TokenBucket(bytes_per_second, max(1, min(byte_burst, outbox_limit // 2)), now)

    def charge(self, now: float, *, cost: float, size: int = 0) -> None:
        """Spend a message's cost and size.

        Raises:
            OverBudgetError: an allowance is spent; it says which.
        """
        if size and not self._bytes.take(now, size, overdraw=True):
            raise OverBudgetError("bytes", f"over {self._bytes.rate:g} bytes/s")
        if cost and not self._messages.take(now, cost):
            raise OverBudgetError("messages", f"over {self._messages.rate:g} messages/s")
