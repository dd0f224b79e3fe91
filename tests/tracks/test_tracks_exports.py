"""The public API is what we mean, the recorders keep the `Recorder` contract, and tracks
stands alone."""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys
import typing
from pathlib import Path

import pytest

import tracks
from tests.module_imports import imports_of, modules_of

# Name -> the module that defines it.
PUBLIC = {
    # The contract the server codes against.
    "Event": "tracks.event",
    "EventError": "tracks.event",
    "JSONValue": "tracks.event",
    "Recorder": "tracks.recorder",
    "RecorderStats": "tracks.recorder",
    "open_recorder": "tracks.url",
    "read_events": "tracks.presence.reading",
    "MemoryRecorder": "tracks.builtin",
    "NullRecorder": "tracks.builtin",
    "JsonlRecorder": "tracks.builtin",
    "SqliteRecorder": "tracks.builtin",
    "PostgresRecorder": "tracks.builtin",
    "HttpRecorder": "tracks.builtin",
    "FanoutRecorder": "tracks.compose",
    "SampledRecorder": "tracks.compose",
    # For custom sinks, encoders and tuning.
    "Tracker": "tracks.tracker",
    "TrackerOptions": "tracks.tracker",
    "Sink": "tracks.sinks",
    "SinkError": "tracks.sinks",
    "TransientError": "tracks.sinks",
    "RejectedError": "tracks.sinks",
    "RetryPolicy": "tracks.retry",
    "BodyEncoder": "tracks.encoders",
    "GenericEncoder": "tracks.encoders",
    "TracksEncoder": "tracks.encoders",
    "PostHogEncoder": "tracks.encoders",
    # Presence figures over a store.
    "Scope": "tracks.presence.stats",
    "StatsStore": "tracks.presence.stats",
    "SqliteStatsStore": "tracks.presence.sqlite",
    "open_stats_store": "tracks.presence.stores",
}

RECORDERS = [
    tracks.MemoryRecorder,
    tracks.NullRecorder,
    tracks.SqliteRecorder,
    tracks.PostgresRecorder,
    tracks.JsonlRecorder,
    tracks.HttpRecorder,
    tracks.FanoutRecorder,
    tracks.SampledRecorder,
]


def test_all_is_what_we_mean() -> None:
    assert sorted(tracks.__all__) == sorted(PUBLIC)


@pytest.mark.parametrize(("name", "module"), sorted(PUBLIC.items()))
def test_each_name_is_the_object_its_module_defines(name: str, module: str) -> None:
    exported = getattr(tracks, name)
    assert exported is getattr(importlib.import_module(module), name)
    if isinstance(exported, type) or inspect.isfunction(exported):  # aliases have no home
        assert exported.__module__ == module


def _protocol_members(protocol: type) -> dict[str, object]:
    """The members a protocol declares: methods, properties and annotated attributes."""
    members = {
        name: value
        for name, value in vars(protocol).items()
        if not name.startswith("_") or name in ("__aenter__", "__aexit__")
    }
    members.update((name, None) for name in protocol.__annotations__)
    return members


def _parameters(function: typing.Callable[..., object]) -> list[tuple[str, object, object]]:
    """(name, kind, resolved annotation) of each parameter but `self`."""
    hints = typing.get_type_hints(function)
    return [
        (p.name, p.kind, hints.get(p.name))
        for p in list(inspect.signature(function).parameters.values())[1:]
    ]


@pytest.mark.parametrize("recorder", RECORDERS, ids=lambda cls: cls.__name__)
def test_recorders_implement_the_protocol_with_its_signatures(recorder: type) -> None:
    """What `isinstance(x, Recorder)` cannot see: the kinds and signatures, not just names."""
    for name, declared in _protocol_members(tracks.Recorder).items():
        implemented = inspect.getattr_static(recorder, name, None)
        if declared is None:  # an attribute: set by the constructor, checked below
            continue
        if isinstance(declared, property):
            assert isinstance(implemented, property), f"{recorder.__name__}.{name}"
            assert declared.fget is not None
            assert implemented.fget is not None
            assert typing.get_type_hints(implemented.fget)["return"] is typing.get_type_hints(
                declared.fget)["return"]
            continue
        assert inspect.isfunction(declared)
        assert inspect.isfunction(implemented), f"{recorder.__name__}.{name} is not a method"
        assert inspect.iscoroutinefunction(implemented) == inspect.iscoroutinefunction(declared), (
            f"{recorder.__name__}.{name}: async in one, not in the other")
        wanted, given = _parameters(declared), _parameters(implemented)
        assert given[: len(wanted)] == wanted, f"{recorder.__name__}.{name}{given}"
        extra = list(inspect.signature(implemented).parameters.values())[1 + len(wanted):]
        assert all(p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
                   for p in extra), f"{recorder.__name__}.{name}: extra required parameters"
        if name != "__aenter__":  # Self: each returns its own type
            assert typing.get_type_hints(implemented).get("return") == typing.get_type_hints(
                declared).get("return"), f"{recorder.__name__}.{name} returns another type"


def test_every_recorder_has_its_description_and_stats(tmp_path: Path) -> None:
    for recorder in (
        tracks.MemoryRecorder(),
        tracks.NullRecorder(),
        tracks.SqliteRecorder(tmp_path / "x.sqlite"),
        tracks.PostgresRecorder("postgresql://postgres@127.0.0.1/x"),
        tracks.JsonlRecorder("-"),
        tracks.HttpRecorder("http://localhost/"),
        tracks.FanoutRecorder(tracks.MemoryRecorder()),
        tracks.SampledRecorder(tracks.MemoryRecorder(), 0.5),
    ):
        assert isinstance(recorder.description, str)
        assert recorder.description
        assert isinstance(recorder.stats, tracks.RecorderStats)


@pytest.mark.parametrize("module", modules_of("tracks"))
def test_no_tracks_module_imports_rtc(module: str) -> None:
    imported = imports_of(module)
    assert not {name for name in imported if name == "rtc" or name.startswith("rtc.")}


@pytest.mark.slow
def test_importing_every_tracks_module_loads_no_rtc() -> None:
    modules = modules_of("tracks")
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m == 'rtc' or m.startswith('rtc.'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_package_is_typed() -> None:
    assert (Path(tracks.__file__).parent / "py.typed").is_file()
