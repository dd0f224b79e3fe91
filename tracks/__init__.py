"""`tracks`: analytics events and the recorders that deliver them.

`Event` is one validated, immutable event. A `Recorder` takes events through a
`record()` that never blocks and never raises, and delivers them in the
background: to memory, a JSONL file, a SQLite or PostgreSQL store or an HTTP backend.
`open_recorder()` builds one from a URL; `read_events()` reads a store back;
`open_stats_store()` answers presence figures (`StatsStore`) for a `Scope`.
"""

from importlib.metadata import PackageNotFoundError, version

from tracks.builtin import (
    HttpRecorder,
    JsonlRecorder,
    MemoryRecorder,
    NullRecorder,
    PostgresRecorder,
    SqliteRecorder,
)
from tracks.compose import FanoutRecorder, SampledRecorder
from tracks.encoders import BodyEncoder, GenericEncoder, PostHogEncoder, TracksEncoder
from tracks.event import Event, EventError, JSONValue
from tracks.presence.reading import read_events
from tracks.presence.sqlite import SqliteStatsStore
from tracks.presence.stats import Scope, StatsStore
from tracks.presence.stores import open_stats_store
from tracks.recorder import Recorder, RecorderStats
from tracks.retry import RetryPolicy
from tracks.sinks import RejectedError, Sink, SinkError, TransientError
from tracks.tracker import Tracker, TrackerOptions
from tracks.url import open_recorder

try:  # the one definition of the version is pyproject.toml's
    __version__ = version("rtc-presence")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "BodyEncoder",
    "Event",
    "EventError",
    "FanoutRecorder",
    "GenericEncoder",
    "HttpRecorder",
    "JSONValue",
    "JsonlRecorder",
    "MemoryRecorder",
    "NullRecorder",
    "PostHogEncoder",
    "PostgresRecorder",
    "Recorder",
    "RecorderStats",
    "RejectedError",
    "RetryPolicy",
    "SampledRecorder",
    "Scope",
    "Sink",
    "SinkError",
    "SqliteRecorder",
    "SqliteStatsStore",
    "StatsStore",
    "Tracker",
    "TrackerOptions",
    "TracksEncoder",
    "TransientError",
    "open_recorder",
    "open_stats_store",
    "read_events",
]
