"""rtc: a Yjs room server that knows who is editing which post, and records it.

Public API: `RtcServer` (run it with `async with`), `ServerConfig`, and the error tree.
"""

from rtc.app import RtcServer
from rtc.config import ConfigError, ServerConfig
from rtc.errors import CloseCode, ProtocolError, RtcError
from rtc.ids import RoomKey
from rtc.limits import RoomLimits
from tracks import __version__ as __version__

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
