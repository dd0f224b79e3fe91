"""A room's document content: applying updates, knowing what they changed and how big the
document has grown.

No I/O here. Updates come from peers, so each is checked for shape before yrs sees it, and
for size against the room's limit before it is applied.
"""

from __future__ import annotations

from typing import Any

from pycrdt import Doc, Subscription, TransactionEvent

from rtc.errors import DocumentTooLargeError, ProtocolError
from rtc.yupdate import check_update

__all__ = ["Content"]


class Content:
    """A Yjs document with the size of its stored updates.

    Args:
        doc: the document, loaded from the store.
        stored_bytes: the size of the stored updates it was loaded from.
        max_size: bytes the stored updates may grow to, 0 = unlimited.

    Attributes:
        size: what was loaded plus every change since; a compaction sets it to the
            compacted size.
    """

    def __init__(self, doc: Doc[Any], *, stored_bytes: int = 0, max_size: int = 0) -> None:
        self.doc = doc
        self.size = stored_bytes
        self._max_size = max_size
        # yrs reports a transaction only when it changed the document: what an update really
        # added (nothing, for one already contained) is read from here.
        self._change: bytes | None = None
        self._subscription: Subscription | None = doc.observe(self._changed)

    def apply(self, update: bytes, *, limited: bool = True) -> bytes | None:
        """Apply a peer's update; returns what the document gained, None if nothing.

        What it gained is the update itself, unless part of it was already there, or part
        waited for a missing dependency (yrs keeps it pending and integrates it later).

        Args:
            update: the update.
            limited: whether the size limit applies (not to another node's update: that
                node applied the limit already, and refusing it would only diverge).

        Raises:
            DocumentTooLargeError: the update would grow the document past its limit.
            ProtocolError: the update is malformed.
        """
        if limited and self._max_size and self.size + len(update) > self._max_size:
            raise DocumentTooLargeError(
                f"{self.size} + {len(update)} bytes is past {self._max_size}"
            )
        check_update(update)  # before yrs sizes anything by its counts
        self._change = None
        try:
            self.doc.apply_update(update)
        except ValueError as error:
            raise ProtocolError("invalid document update") from error
        change, self._change = self._change, None
        if change is not None:
            self.size += len(change)
        return change

    def close(self) -> None:
        """Stop observing the document, so that it can be freed: yrs holds the observer, and
        pycrdt's wrapper of it holds the document, out of the garbage collector's sight (a
        document never unobserved lives as long as the process). Nothing is applied after."""
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            self.doc.unobserve(subscription)

    def compacted(self) -> bytes:
        """The whole document as one update (for compaction); `size` becomes its size."""
        state = self.doc.get_update()
        self.size = len(state)
        return state

    def _changed(self, event: TransactionEvent) -> None:
        self._change = event.update
