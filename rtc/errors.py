"""The rtc error tree: every error knows the WebSocket close code it ends a connection with.

No I/O here. Close codes follow RFC 6455 §7.4.1; codes 4400-4499 are the ones y-websocket
treats as permanent (it stops reconnecting), so every "do not retry" refusal lives there.
"""

from __future__ import annotations

__all__ = [
    "AnnounceTimeoutError",
    "AwarenessTooBigError",
    "CloseCode",
    "ClusterUnavailableError",
    "DocumentTooLargeError",
    "HeldTooMuchError",
    "HeldTotalError",
    "ProtocolError",
    "RateLimitedError",
    "RoomUnavailableError",
    "RtcError",
    "ServerBusyError",
    "UnsupportedDataError",
]


class CloseCode:
    """The close codes this server sends (RFC 6455 §7.4.1 and the 4000-4999 private range)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS_RECEIVED = 1005  # never sent: a close frame that carried no code
    ABNORMAL_CLOSURE = 1006  # never sent: the connection ended without a close frame
    INVALID_PAYLOAD = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013
    AUTHENTICATION_FAILED = 4401
    FORBIDDEN = 4403
    ANNOUNCE_TIMEOUT = 4408
    SESSION_CONFLICT = 4409
    DOCUMENT_TOO_LARGE = 4413
    LIMIT_EXCEEDED = 4429
    SERVER_BUSY = 4503


class RtcError(Exception):
    """Base of every error that ends a connection.

    Attributes:
        close_code: the WebSocket close code the connection is closed with.
        reason: the close reason sent to the peer (short, ASCII).
        error_code: the `error_code` recorded in `connection_error` events.
    """

    close_code: int = CloseCode.INTERNAL_ERROR
    reason: str = "internal-error"
    error_code: str = "internal-error"

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail or self.reason)
        self.detail = detail or self.reason


class ProtocolError(RtcError):
    """The peer sent bytes that are not a valid y-websocket message."""

    close_code = CloseCode.PROTOCOL_ERROR
    reason = "protocol-error"
    error_code = "protocol-error"


class UnsupportedDataError(ProtocolError):
    """The peer sent a text frame; y-websocket speaks binary frames only."""

    close_code = CloseCode.UNSUPPORTED_DATA


class RateLimitedError(RtcError):
    """The peer sent messages faster than its allowance."""

    close_code = CloseCode.POLICY_VIOLATION
    reason = "rate-limited"
    error_code = "rate-limited"


class ServerBusyError(RtcError):
    """Too many rooms are loaded to open another one; y-websocket retries later (4503)."""

    close_code = CloseCode.SERVER_BUSY
    reason = "too-many-rooms"
    error_code = "server-busy"


class ClusterUnavailableError(RtcError):
    """Redis does not answer this cluster node: no new session can be admitted cluster-wide
    (y-websocket retries); connected editors carry on."""

    close_code = CloseCode.SERVER_BUSY
    reason = "cluster-unavailable"
    error_code = "cluster-unavailable"


class RoomUnavailableError(RtcError):
    """The room's document could not be loaded (a locked or corrupt store)."""

    close_code = CloseCode.TRY_AGAIN_LATER
    reason = "room-unavailable"
    error_code = "internal-error"


class AnnounceTimeoutError(RtcError):
    """The peer never sent the awareness update that names its session."""

    close_code = CloseCode.ANNOUNCE_TIMEOUT
    reason = "announce-timeout"
    error_code = "announce-timeout"


class HeldTooMuchError(ProtocolError):
    """A connection sent more than a room holds before it named its session."""

    close_code = CloseCode.MESSAGE_TOO_BIG
    reason = "too-much-held"
    error_code = "message-too-big"


class HeldTotalError(RtcError):
    """Newcomers together hold all the server holds: retry later (1013, y-websocket does)."""

    close_code = CloseCode.TRY_AGAIN_LATER
    reason = "held-total"
    error_code = "server-busy"


class AwarenessTooBigError(ProtocolError):
    """An awareness message with more entries, or a larger own state, than a room parses."""

    close_code = CloseCode.MESSAGE_TOO_BIG
    reason = "awareness-too-big"
    error_code = "message-too-big"


class DocumentTooLargeError(RtcError):
    """An update would grow the document past `max_document_size`.

    A 44xx code: y-websocket stops reconnecting, which is right, since its next sync would
    send the same update again.
    """

    close_code = CloseCode.DOCUMENT_TOO_LARGE
    reason = "document-too-large"
    error_code = "document-too-large"
