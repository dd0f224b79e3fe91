"""open_recorder(): every URL form, its description, and clear errors for the rest."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tracks import (
    HttpRecorder,
    JsonlRecorder,
    MemoryRecorder,
    NullRecorder,
    Recorder,
    SqliteRecorder,
    open_recorder,
)


@pytest.mark.parametrize(
    ("url", "kind", "description"),
    [
        ("sqlite:///srv/rtc/events.sqlite", SqliteRecorder, "sqlite:///srv/rtc/events.sqlite"),
        ("jsonl:///srv/rtc/events.jsonl", JsonlRecorder, "jsonl:///srv/rtc/events.jsonl"),
        ("jsonl:-", JsonlRecorder, "jsonl:-"),
        ("http://localhost:8000/batch", HttpRecorder, "http://localhost:8000/batch"),
        ("https://u:p@t.example/rec?key=s", HttpRecorder, "https://t.example/rec"),
        ("memory:", MemoryRecorder, "memory:"),
        ("none", NullRecorder, "none"),
    ],
)
def test_url_forms(url: str, kind: type, description: str) -> None:
    recorder = open_recorder(url)
    assert isinstance(recorder, kind)
    assert isinstance(recorder, Recorder)
    assert recorder.description == description


def test_relative_paths_resolve_against_the_working_directory() -> None:
    recorder = open_recorder("sqlite://data/events.sqlite")
    assert recorder.description == f"sqlite://{Path(os.getcwd()) / 'data/events.sqlite'}"
    recorder = open_recorder("jsonl://events.jsonl")
    assert recorder.description == f"jsonl://{Path(os.getcwd()) / 'events.jsonl'}"


def test_options_reach_the_recorder() -> None:
    recorder = open_recorder("memory:", max_events=5)
    assert isinstance(recorder, MemoryRecorder)
    with pytest.raises(TypeError):
        open_recorder("sqlite:///x.sqlite", no_such_option=1)
    with pytest.raises(ValueError, match="queue_size"):
        open_recorder("sqlite:///x.sqlite", queue_size=0)


@pytest.mark.parametrize(
    "url",
    [
        "",
        "sqlite:",
        "sqlite://",
        "sqlite:///",
        "postgres:db/x",  # postgres://… is accepted; without "//" it is not
        "events.sqlite",
        "http://",
        "mem",
    ],
)
def test_bad_urls_list_the_accepted_forms(url: str) -> None:
    with pytest.raises(
        ValueError, match=re.escape("accepted forms: sqlite:///abs/path.sqlite")
    ) as info:
        open_recorder(url)
    for form in ("jsonl:-", "https://host/path", "memory:", "none"):
        assert form in str(info.value)
