"""Streams: which events are accepted, from whom, sampled how, recorded where.

`routing` decides, purely, where each event goes; `config` reads and validates the file
(``rtc serve --streams``) that describes the streams; `positions` finds a problem's line in it.
"""

from tracks.streams.config import load_streams, streams_from_mapping
from tracks.streams.routing import (
    DEFAULT_RECORDER,
    ORIGINS,
    PROP_TYPES,
    DocumentKey,
    Origin,
    Outcome,
    PropRule,
    Routing,
    Stream,
    StreamConfig,
    StreamConfigError,
)

__all__ = [
    "DEFAULT_RECORDER",
    "ORIGINS",
    "PROP_TYPES",
    "DocumentKey",
    "Origin",
    "Outcome",
    "PropRule",
    "Routing",
    "Stream",
    "StreamConfig",
    "StreamConfigError",
    "load_streams",
    "streams_from_mapping",
]
