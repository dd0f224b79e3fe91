"""When to retry a failed delivery: `RetryPolicy`, `Retry-After` parsing. Pure: no I/O, no sleep."""

from __future__ import annotations

import random
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

__all__ = ["RetryPolicy", "parse_retry_after"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """Exponential backoff with jitter, and a server's ``Retry-After`` as the floor.

    Attempt ``n`` (1-based: the attempt that just failed) waits
    ``min(max_delay, base_delay * multiplier ** (n - 1))``, minus up to ``jitter`` of
    itself at random (so many recorders that failed together do not retry together),
    and never less than ``retry_after`` (capped at ``max_retry_after``, so a hostile
    header cannot park us for a day).

    Args:
        max_attempts: attempts per batch before giving up (spool or drop).
        base_delay: seconds after the first failure.
        multiplier: growth per attempt.
        max_delay: cap of the exponential part, in seconds.
        jitter: fraction of the delay that is randomised, in [0, 1].
        max_retry_after: cap on a server's Retry-After, in seconds.
    """

    max_attempts: int = 5
    base_delay: float = 0.5
    multiplier: float = 2.0
    max_delay: float = 30.0
    jitter: float = 0.5
    max_retry_after: float = 300.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.base_delay < 0 or self.max_delay < 0 or self.max_retry_after < 0:
            raise ValueError("delays must be >= 0")
        if self.multiplier < 1:
            raise ValueError(f"multiplier must be >= 1, got {self.multiplier}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be within [0, 1], got {self.jitter}")

    def backoff(
        self, attempt: int, retry_after: float | None = None, *, rand: float | None = None
    ) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based), never giving up.

        Args:
            attempt: the attempt that just failed, from 1.
            retry_after: the server's Retry-After in seconds, if it sent one.
            rand: a number in [0, 1) for the jitter; drawn at random when omitted.
        """
        if attempt < 1:
            raise ValueError(f"attempt must be >= 1, got {attempt}")
        # Cap the exponent so a long outage cannot overflow the float.
        exponential = self.base_delay * self.multiplier ** min(attempt - 1, 64)
        delay = min(self.max_delay, exponential)
        if rand is None:
            rand = random.random()
        delay -= delay * self.jitter * rand
        if retry_after is not None:
            delay = max(delay, min(max(retry_after, 0.0), self.max_retry_after))
        return delay

    def delay(
        self, attempt: int, retry_after: float | None = None, *, rand: float | None = None
    ) -> float | None:
        """Like `backoff`, but ``None`` once ``max_attempts`` attempts have failed."""
        if attempt >= self.max_attempts:
            return None
        return self.backoff(attempt, retry_after, rand=rand)


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (RFC 9110 §10.2.3), or ``None``.

    Args:
        value: the header: delay-seconds or an HTTP-date.
        now: the current Unix time, for the HTTP-date form.
    """
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)
