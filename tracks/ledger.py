"""`Ledger`: the engine's books. What was written, retried, spooled, rejected, set aside and
lost, and the log lines about it. No I/O but logging.

Losses are counted by event name, whatever their cause, so `RecorderStats.dropped`
always equals the sum of `RecorderStats.dropped_by_name`. Log lines are aggregated:
one per burst of failures, one per misconfiguration, one per interval of drops,
never one per event. They never carry event properties.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import Literal

from tracks.event import Event
from tracks.outage import Failure, Step
from tracks.recorder import RecorderStats

__all__ = ["DROP_LOG_INTERVAL", "NOT_AN_EVENT", "Ledger", "describe"]

logger = logging.getLogger(__name__)

DROP_LOG_INTERVAL = 10.0
"""Seconds between aggregated "dropped N events" warnings."""

NOT_AN_EVENT = "<not an Event>"
"""The name under which `record()` calls with something other than an `Event` are counted."""


class Ledger:
    """Counters of one recorder, and the log lines about them.

    Args:
        description: the recorder's, to prefix log lines.
    """

    def __init__(self, description: str) -> None:
        self.description = description
        self.written = 0
        self.retried = 0
        self.spooled = 0
        self.rejected = 0
        self.dead_lettered = 0
        self.dropped = 0
        self.dropped_by_name: dict[str, int] = {}
        self._rejection_logged = False
        self._drops_logged = 0
        self._drops_logged_at = -math.inf
        self._set_aside_unlogged = 0
        self._set_aside_logged_at = -math.inf

    def stats(self, *, accepted: int, queue_depth: int) -> RecorderStats:
        """A snapshot, with the two figures the engine keeps itself."""
        return RecorderStats(
            accepted=accepted,
            written=self.written,
            dropped=self.dropped,
            retried=self.retried,
            spooled=self.spooled,
            rejected=self.rejected,
            dead_lettered=self.dead_lettered,
            queue_depth=queue_depth,
            dropped_by_name=dict(self.dropped_by_name),
        )

    # -- losses -------------------------------------------------------------

    def drop(self, name: str, count: int = 1) -> None:
        """Count ``count`` events named ``name`` as lost (logged later, aggregated)."""
        if count > 0:
            self.dropped += count
            self.dropped_by_name[name] = self.dropped_by_name.get(name, 0) + count

    def drop_event(self, event: object) -> None:
        """Count one event (or a non-event handed to `record()`) as lost."""
        self.drop(event.name if isinstance(event, Event) else NOT_AN_EVENT)

    def drop_batch(self, batch: Sequence[Event], reason: str) -> None:
        """Count a whole batch as lost, and say why at once."""
        for event in batch:
            self.drop_event(event)
        logger.error("%s: dropped %d events: %s", self.description, len(batch), reason)
        self._drops_logged += len(batch)

    def report_drops(self, *, final: bool = False) -> None:
        """Log the drops not logged yet, at most once per `DROP_LOG_INTERVAL` unless ``final``."""
        if final and self._set_aside_unlogged:
            logger.error(
                "%s: set aside %d more events the sink cannot write (%d in a dead-letter file)",
                self.description,
                self._set_aside_unlogged,
                self.dead_lettered,
            )
            self._set_aside_unlogged = 0
        unlogged = self.dropped - self._drops_logged
        if unlogged <= 0:
            return
        now = time.monotonic()
        if final or now - self._drops_logged_at >= DROP_LOG_INTERVAL:
            logger.warning(
                "%s: dropped %d events (queue full or recorder closed); %d in total",
                self.description,
                unlogged,
                self.dropped,
            )
            self._drops_logged = self.dropped
            self._drops_logged_at = now

    # -- events set aside ---------------------------------------------------

    def set_aside(
        self,
        events: Sequence[Event],
        error: BaseException,
        outcome: Literal["kept", "rejected", "lost"],
        where: str,
    ) -> None:
        """Events the sink cannot write were split from their batch and set aside.

        ``outcome``: ``"kept"`` in the dead-letter file ``where``; ``"rejected"`` for
        want of one (no spool, no path); ``"lost"``: the file is full or failed.
        Logged once per `DROP_LOG_INTERVAL`: an attacker sending bad events must not
        flood the log.
        """
        count = len(events)
        if outcome == "kept":
            self.dead_lettered += count
            fate = f"kept in {where}"
        elif outcome == "rejected":
            self.rejected += count
            fate = "counted as rejected (no dead-letter file without a spool)"
        else:
            for event in events:
                self.drop_event(event)
            self._drops_logged += count  # said here, not again by report_drops()
            fate = f"dropped: the dead-letter file {where} is full or cannot be written"
        self._set_aside_unlogged += count
        now = time.monotonic()
        if now - self._set_aside_logged_at < DROP_LOG_INTERVAL:
            return
        logger.error(
            "%s: set aside %d events the sink cannot write (%s), %s; the rest was written",
            self.description,
            self._set_aside_unlogged,
            describe(error),
            fate,
        )
        self._set_aside_unlogged = 0
        self._set_aside_logged_at = now

    # -- failures -----------------------------------------------------------

    def failed(self, failure: Failure, step: Step, exc: Exception, count: int) -> None:
        """A write of ``count`` events failed with ``exc``; `Outage` chose ``step``."""
        if step.action == "reject":
            self.rejected += count
            # Logged once: the same misconfiguration would otherwise repeat every batch.
            level = logging.DEBUG if self._rejection_logged else logging.ERROR
            self._rejection_logged = True
            logger.log(
                level,
                "%s: backend rejected %d events, not retrying: %s",
                self.description,
                count,
                exc,
            )
        elif not step.announce:
            pass  # the rest of a burst is only counted: one line per outage
        elif failure.kind == "unexpected":
            logger.error("%s: sink failed, retrying", self.description, exc_info=exc)
        else:
            logger.warning("%s: sink unavailable, retrying: %s", self.description, exc)

    def recovered(self, failures: int) -> None:
        """A write succeeded after a burst of ``failures`` failed ones (0: there was none)."""
        if failures:
            logger.info("%s: sink recovered after %d failed attempts", self.description, failures)


def describe(error: BaseException) -> str:
    """An error for a log line, without event contents."""
    if isinstance(error, UnicodeError):
        # A codec's message quotes the character it choked on: the reason is enough.
        reason = getattr(error, "reason", "")
        return f"{type(error).__name__}: {reason}"
    return f"{type(error).__name__}: {error}"
