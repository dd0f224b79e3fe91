"""The ready-made recorders: memory, none, JSONL, SQLite, PostgreSQL and HTTP.

`JsonlRecorder`, `SqliteRecorder`, `PostgresRecorder` and `HttpRecorder` are the shared `Tracker`
engine around one sink each, so they share its guarantees and its knobs
(`TrackerOptions`). `MemoryRecorder` and `NullRecorder` have no background work.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self, Unpack

import anyio
import httpx

from tracks.encoders import BodyEncoder, encoder_named
from tracks.event import Event
from tracks.recorder import RecorderStats
from tracks.sinks.http import HttpSink
from tracks.sinks.jsonl import JsonlSink
from tracks.sinks.postgresql import PostgresSink
from tracks.sinks.sqlite import SqliteSink
from tracks.tracker import Tracker, TrackerOptions

__all__ = [
    "HttpRecorder",
    "JsonlRecorder",
    "MemoryRecorder",
    "NullRecorder",
    "PostgresRecorder",
    "SqliteRecorder",
]


@dataclass(eq=False)
class _Waiter:
    predicate: Callable[[Event], bool]
    done: anyio.Event = field(default_factory=anyio.Event)
    result: Event | None = None
    error: BaseException | None = None


class MemoryRecorder:
    """Keeps events in memory, in order: the test double, and the demo's live feed.

    Events are stored the moment `record()` is called; there is no background
    task, so `flush()` has nothing to wait for and entering is optional.

    Args:
        max_events: how many events to keep; beyond it the oldest are dropped
            and counted. ``None`` keeps everything.
    """

    description = "memory:"

    def __init__(self, *, max_events: int | None = 100_000) -> None:
        if max_events is not None and max_events < 1:
            raise ValueError(f"max_events must be >= 1 or None, got {max_events}")
        self._events: deque[Event] = deque()
        self._max_events = max_events
        self._waiters: list[_Waiter] = []
        self._closed = False
        self._accepted = 0
        self._dropped_by_name: dict[str, int] = {}

    @property
    def events(self) -> list[Event]:
        """The events kept, oldest first (a copy)."""
        return list(self._events)

    def clear(self) -> None:
        """Forget the events kept so far (counters stay)."""
        self._events.clear()

    def record(self, event: Event) -> None:
        """Keep an event and wake whoever waits for one like it. Never blocks, never raises."""
        if self._closed or not isinstance(event, Event):
            self._count_drop(event)
            return
        self._accepted += 1
        self._events.append(event)
        if self._max_events is not None and len(self._events) > self._max_events:
            self._count_drop(self._events.popleft())
        for waiter in list(self._waiters):
            try:
                matched = waiter.predicate(event)
            except Exception as exc:  # the waiter's bug is the waiter's to see
                waiter.error = exc
                matched = True
            if matched:
                if waiter.error is None:
                    waiter.result = event
                self._waiters.remove(waiter)
                waiter.done.set()

    def _count_drop(self, event: object) -> None:
        name = event.name if isinstance(event, Event) else "<not an Event>"
        self._dropped_by_name[name] = self._dropped_by_name.get(name, 0) + 1

    async def wait_for(self, predicate: Callable[[Event], bool]) -> Event:
        """The first kept event matching ``predicate``, or else the next one recorded.

        Wrap it in `anyio.fail_after`; it waits as long as it takes.
        """
        for event in self._events:
            if predicate(event):
                return event
        waiter = _Waiter(predicate)
        self._waiters.append(waiter)
        try:
            await waiter.done.wait()
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
        if waiter.error is not None:
            raise waiter.error
        assert waiter.result is not None  # set together with done, unless error is
        return waiter.result

    async def flush(self) -> None:
        """Nothing to do: events are stored as they are recorded."""

    async def aclose(self) -> None:
        """Stop accepting events; the kept ones stay readable."""
        self._closed = True

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    @property
    def stats(self) -> RecorderStats:
        dropped = sum(self._dropped_by_name.values())
        return RecorderStats(
            accepted=self._accepted,
            written=self._accepted,
            dropped=dropped,
            dropped_by_name=dict(self._dropped_by_name),
        )


class NullRecorder:
    """Accepts events and discards them (``none``): recording switched off."""

    description = "none"

    def __init__(self) -> None:
        self._accepted = 0

    def record(self, event: Event) -> None:
        self._accepted += 1

    async def flush(self) -> None:
        pass

    async def aclose(self) -> None:
        pass

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        pass

    @property
    def stats(self) -> RecorderStats:
        return RecorderStats(accepted=self._accepted)


class JsonlRecorder(Tracker):
    """Appends events to a JSON-lines file (or stdout with ``"-"``), one batch per write.

    Args:
        path: the file, or ``"-"`` for standard output.
        **options: engine knobs (`TrackerOptions`); ``flush_interval`` defaults to 0.2 s
            so ``tail -f`` stays live.
    """

    def __init__(self, path: str | Path, **options: Unpack[TrackerOptions]) -> None:
        options.setdefault("flush_interval", 0.2)
        super().__init__(JsonlSink(path), **options)


class SqliteRecorder(Tracker):
    """Stores events in a SQLite file (WAL), inserting each batch in one transaction.

    Args:
        path: the database file; created and migrated on first write.
        **options: engine knobs (`TrackerOptions`); ``batch_size`` defaults to 20,000
            and ``queue_size`` to 100,000: random event ids spread every commit over
            the whole UNIQUE index, so fewer, larger transactions are what sustain
            ingest (a batch only grows that large under load; ``flush_interval``
            still bounds the wait).
    """

    def __init__(self, path: str | Path, **options: Unpack[TrackerOptions]) -> None:
        options.setdefault("batch_size", 20_000)
        options.setdefault("queue_size", 100_000)
        super().__init__(SqliteSink(path), **options)


class PostgresRecorder(Tracker):
    """Stores events in PostgreSQL, COPYing each batch in one transaction, each event_id once.

    Several server nodes may share one database: an event two of them record (same
    deterministic ``event_id``) is stored once. Needs the ``rtc-presence[postgresql]`` extra.

    Args:
        url: ``postgresql://user@host:port/db[?schema=NAME]`` (or ``postgres://``); the
            schema is created and migrated on first write.
        connect_timeout: seconds to wait for a connection before a write fails (and is
            retried, then spooled).
        **options: engine knobs (`TrackerOptions`); ``batch_size`` defaults to 20,000 and
            ``queue_size`` to 100,000: one COPY and one statement per batch, so large
            batches are what sustain ingest (a batch only grows that large under load;
            ``flush_interval`` still bounds the wait). Pass ``spool=<dir>`` so an outage
            longer than the retries loses nothing.

    Raises:
        ImportError: psycopg is not installed (the message names the extra).
        ValueError: a malformed URL.
    """

    def __init__(
        self, url: str, *, connect_timeout: float = 10.0, **options: Unpack[TrackerOptions]
    ) -> None:
        options.setdefault("batch_size", 20_000)
        options.setdefault("queue_size", 100_000)
        super().__init__(PostgresSink(url, connect_timeout=connect_timeout), **options)


class HttpRecorder(Tracker):
    """Sends events in batches to an analytics HTTP endpoint.

    Args:
        url: the endpoint.
        encoder: a `BodyEncoder`, or ``"generic"``, ``"tracks"`` or ``"posthog"``.
        api_key: for the ``"posthog"`` encoder.
        headers: extra request headers.
        gzip: compress request bodies.
        timeout: seconds per connect, read and write.
        transport: an httpx transport (``httpx.MockTransport`` in tests).
        **options: engine knobs (`TrackerOptions`); by default batches hold at most
            500 events and 1 MB and wait at most 2 s. Pass ``spool=<dir>`` so an
            outage longer than the retries loses nothing.
    """

    def __init__(
        self,
        url: str,
        *,
        encoder: BodyEncoder | str = "generic",
        api_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        gzip: bool = False,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
        **options: Unpack[TrackerOptions],
    ) -> None:
        if isinstance(encoder, str):
            encoder = encoder_named(encoder, api_key=api_key or "")
        sink = HttpSink(
            url, encoder=encoder, headers=headers, gzip=gzip, timeout=timeout, transport=transport
        )
        options.setdefault("batch_size", 500)
        options.setdefault("batch_bytes", 1_000_000)
        options.setdefault("flush_interval", 2.0)
        super().__init__(sink, **options)
