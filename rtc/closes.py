"""How a connection ended: close frames and server decisions, mapped to what is recorded.

No I/O here. The contract (README, *Events*): clean closes (1000, 1001, a close without a
code) and deliberate refusals record no error; every other end records one
`connection_error` with its `error_code` and `close_code`.
"""

from __future__ import annotations

from dataclasses import dataclass

from rtc.errors import CloseCode, RtcError

__all__ = ["Ending", "classify"]

# Close codes a peer may end with that mean "I chose to leave".
_CLEAN_CODES = frozenset({CloseCode.NORMAL, CloseCode.GOING_AWAY, CloseCode.NO_STATUS_RECEIVED})
# Close codes the server sends that are a decision, not a failure: no connection_error.
_DECISIONS = frozenset(
    {
        CloseCode.GOING_AWAY,
        CloseCode.LIMIT_EXCEEDED,
        CloseCode.SESSION_CONFLICT,
        CloseCode.AUTHENTICATION_FAILED,  # only as "token-expired": failures carry an error
        CloseCode.FORBIDDEN,  # only as "revoked"
    }
)


@dataclass(frozen=True, slots=True)
class Ending:
    """What a finished connection amounts to.

    Attributes:
        error_code: the `connection_error` to record, or None for a clean or decided end.
        close_code: the close code on the wire (1006 when there was none).
        clean: whether the session left cleanly (the `leave` event's `clean`).
    """

    error_code: str | None
    close_code: int
    clean: bool


def classify(
    *,
    error: RtcError | None,
    decided: tuple[int, str] | None,
    received: tuple[int, str] | None,
    sent: tuple[int, str] | None,
) -> Ending:
    """Classify an end from what the server knows of it.

    Args:
        error: why the server failed the connection, if it did.
        decided: the (code, reason) the server closed it with, if it chose to.
        received: the peer's close frame, if one arrived.
        sent: the close frame websockets sent on its own (keepalive, oversized frame, ...).
    """
    if error is not None:
        return Ending(error.error_code, error.close_code, False)
    if decided is not None:
        code, reason = decided
        if code in _DECISIONS:
            return Ending(None, code, True)
        return Ending(reason, code, False)  # e.g. 1013 "outbox-full"
    if received is not None:
        code = received[0]
        if code in _CLEAN_CODES:
            return Ending(None, code, True)
        return Ending("abnormal-closure", code, False)
    if sent is not None:
        code = sent[0]
        if code == CloseCode.INTERNAL_ERROR:
            # websockets sends 1011 on its own only when a keepalive ping goes unanswered:
            # the handler never raises (message handling failures are our decisions,
            # `error` above), so no other 1011 reaches this point.
            return Ending("ping-timeout", code, False)
        if code == CloseCode.MESSAGE_TOO_BIG:
            return Ending("message-too-big", code, False)
        if code in (CloseCode.PROTOCOL_ERROR, CloseCode.INVALID_PAYLOAD):
            return Ending("protocol-error", code, False)
        if code == CloseCode.GOING_AWAY:
            return Ending(None, code, True)
    # RFC 6455 §7.1.5: no close frame either way is "abnormal closure", 1006.
    return Ending("abnormal-closure", CloseCode.ABNORMAL_CLOSURE, False)
