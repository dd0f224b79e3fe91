"""A token bucket: how many messages a connection may send, on average and in a burst.

No I/O here; time is passed in.
"""

from __future__ import annotations

__all__ = ["TokenBucket"]


class TokenBucket:
    """Allows `rate` events a second on average and `burst` at once.

    Args:
        rate: tokens added per second.
        burst: the bucket's size (and what a fresh connection starts with).
        now: the current time in seconds.
    """

    __slots__ = ("_burst", "_rate", "_stamp", "_tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self._rate = rate
        self._burst = burst
        self._tokens = burst
        self._stamp = now

    @property
    def rate(self) -> float:
        return self._rate

    def take(self, now: float, cost: float = 1.0, *, overdraw: bool = False) -> bool:
        """Spend `cost` tokens; False when not enough are left.

        With `overdraw`, a cost larger than what is left passes as long as something is left,
        and the bucket goes into debt: one oversized spend, then nothing until it refills.
        """
        elapsed = now - self._stamp
        if elapsed > 0:
            self._tokens = min(self._burst, self._tokens + elapsed * self._rate)
            self._stamp = now
        if self._tokens < cost and not (overdraw and self._tokens > 0):
            return False
        self._tokens -= cost
        return True
