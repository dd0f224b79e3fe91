"""`open_recorder()`: build a recorder from a URL string, for config files and command lines."""

from __future__ import annotations

from typing import Any

from tracks.builtin import (
    HttpRecorder,
    JsonlRecorder,
    MemoryRecorder,
    NullRecorder,
    PostgresRecorder,
    SqliteRecorder,
)
from tracks.recorder import Recorder
from tracks.urls import bad_url, parse_store_url, recorder_kind

__all__ = ["open_recorder"]


def open_recorder(url: str, **options: Any) -> Recorder:
    """A recorder for ``url``; ``options`` go to its constructor.

    The recorder is not started: use it as ``async with open_recorder(url) as recorder:``
    (see `Recorder` for its one lifecycle).

    Forms: ``sqlite:///abs/path.sqlite``, ``sqlite://relative.sqlite``,
    ``jsonl:///abs/path.jsonl``, ``jsonl:-`` (stdout),
    ``postgresql://user@host:port/db[?schema=NAME]`` (or ``postgres://``), ``http://…``,
    ``https://…``, ``memory:`` and ``none``.

    Raises:
        ValueError: the URL is not one of the accepted forms (the message lists them).
        TypeError: an option the recorder does not take.
        ImportError: a ``postgresql://`` URL without psycopg installed (the message names
            the extra, ``rtc-presence[postgresql]``).
    """
    kind = recorder_kind(url)
    url = url.strip()
    if kind == "none":
        if options:
            raise TypeError(f"'none' takes no options, got {sorted(options)}")
        return NullRecorder()
    if kind == "memory":
        return MemoryRecorder(**options)
    if kind == "http":
        return HttpRecorder(url, **options)
    if kind == "postgresql":
        return PostgresRecorder(url, **options)
    store, path = parse_store_url(url)
    if store == "sqlite":
        if path == "-":  # pragma: no cover - parse_store_url gives "-" only for jsonl
            raise bad_url(url, "sqlite cannot write to stdout")
        return SqliteRecorder(path, **options)
    return JsonlRecorder(path, **options)
