"""rtc: a Yjs room server that knows who is editing which post, and records it.

Public API: `RtcServer` (run it with `async with`), `ServerConfig`, and the error tree.
"""

from .config import ConfigError, ServerConfig
from .errors import CloseCode, ProtocolError, RtcError
from .room import RoomKey, RoomLimits
from .server import RtcServer

__all__ = [
    "CloseCode",
    "ConfigError",
    "ProtocolError",
    "RoomKey",
    "RoomLimits",
    "RtcError",
    "RtcServer",
    "ServerConfig",
]
