"""The public API is what we mean, and tracks stands alone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import tracks

PUBLIC = {
    # The contract the server codes against.
    "Event",
    "EventError",
    "JSONValue",
    "Recorder",
    "RecorderStats",
    "open_recorder",
    "read_events",
    "MemoryRecorder",
    "NullRecorder",
    "JsonlRecorder",
    "SqliteRecorder",
    "HttpRecorder",
    "FanoutRecorder",
    "SampledRecorder",
    # For custom sinks, encoders and tuning.
    "Tracker",
    "TrackerOptions",
    "Sink",
    "SinkError",
    "TransientError",
    "RejectedError",
    "RetryPolicy",
    "BodyEncoder",
    "GenericEncoder",
    "TracksEncoder",
    "PostHogEncoder",
    # Presence figures over a store.
    "Scope",
    "StatsStore",
    "SqliteStatsStore",
    "open_stats_store",
}


def test_all_is_what_we_mean() -> None:
    assert set(tracks.__all__) == PUBLIC
    assert len(tracks.__all__) == len(PUBLIC)
    for name in tracks.__all__:
        assert getattr(tracks, name) is not None


def test_recorders_satisfy_the_protocol() -> None:
    for recorder in (
        tracks.MemoryRecorder(),
        tracks.NullRecorder(),
        tracks.SqliteRecorder("x.sqlite"),
        tracks.JsonlRecorder("-"),
        tracks.HttpRecorder("http://localhost/"),
        tracks.FanoutRecorder(tracks.MemoryRecorder()),
        tracks.SampledRecorder(tracks.MemoryRecorder(), 0.5),
    ):
        assert isinstance(recorder, tracks.Recorder)


@pytest.mark.slow
def test_tracks_never_imports_rtc() -> None:
    code = (
        "import sys, tracks, tracks.cli, tracks.stats, tracks.store\n"
        "bad = sorted(m for m in sys.modules if m == 'rtc' or m.startswith('rtc.'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_package_is_typed() -> None:
    assert (Path(tracks.__file__).parent / "py.typed").is_file()
