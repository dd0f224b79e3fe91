"""Prometheus metrics of one server (its own registry, so several servers can share a process)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from rtc.documents import DocumentStats
from rtc.room import Room
from tracks import Recorder

__all__ = [
    "LiveFigures",
    "Metrics",
    "RecorderFigures",
    "live_figures",
    "message_type",
    "recorder_figures",
]

_MESSAGE_TYPES = {
    (0, 0): "sync_step1",
    (0, 1): "sync_step2",
    (0, 2): "sync_update",
    (1, None): "awareness",
    (2, None): "auth",
    (3, None): "query_awareness",
}


def message_type(data: bytes) -> str:
    """A label for a y-websocket frame, from its first bytes (no full decode)."""
    if not data:
        return "invalid"
    if data[0] == 0:
        return _MESSAGE_TYPES.get((0, data[1] if len(data) > 1 else -1), "invalid")
    return _MESSAGE_TYPES.get((data[0], None), "invalid")


@dataclass(frozen=True, slots=True)
class LiveFigures:
    """What is present right now, read at scrape time."""

    connections: int
    rooms: int
    sessions: int
    contributors: int


@dataclass(frozen=True, slots=True)
class RecorderFigures:
    """One recorder's counters, read at scrape time."""

    recorder: str
    queue_depth: int
    accepted: int
    written: int
    dropped: int
    retried: int
    spooled: int
    rejected: int
    dead_lettered: int
    dropped_by_name: dict[str, int]


def live_figures(rooms: Iterable[Room]) -> LiveFigures:
    """What is present in these rooms right now."""
    connections = room_count = sessions = contributors = 0
    for room in rooms:
        room_count += 1
        connections += room.connection_count
        sessions += room.session_count
        contributors += len(room.contributor_ids())
    return LiveFigures(
        connections=connections, rooms=room_count, sessions=sessions, contributors=contributors
    )


def recorder_figures(recorders: Iterable[Recorder]) -> list[RecorderFigures]:
    """Each recorder's counters, labelled ``index:description``."""
    figures = []
    for index, recorder in enumerate(recorders):
        stats = recorder.stats
        figures.append(
            RecorderFigures(
                recorder=f"{index}:{recorder.description}",
                queue_depth=stats.queue_depth,
                accepted=stats.accepted,
                written=stats.written,
                dropped=stats.dropped,
                retried=stats.retried,
                spooled=stats.spooled,
                rejected=stats.rejected,
                dead_lettered=stats.dead_lettered,
                dropped_by_name=dict(stats.dropped_by_name),
            )
        )
    return figures


class _LiveCollector(Collector):
    def __init__(
        self,
        live: Callable[[], LiveFigures],
        recorders: Callable[[], Iterable[RecorderFigures]],
    ) -> None:
        self._live = live
        self._recorders = recorders

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        live = self._live()
        for name, value, text in (
            ("rtc_connections", live.connections, "Open WebSocket connections to rooms."),
            ("rtc_rooms", live.rooms, "Rooms loaded in memory."),
            ("rtc_sessions", live.sessions, "Admitted sessions present."),
            ("rtc_contributors", live.contributors, "Distinct users present, summed over rooms."),
        ):
            yield GaugeMetricFamily(name, text, value=value)
        depth = GaugeMetricFamily(
            "rtc_recorder_queue_depth", "Events waiting in a recorder.", labels=["recorder"]
        )
        counters = {
            field: CounterMetricFamily(
                f"rtc_recorder_{field}",
                f"Events {field.replace('_', '-')} by a recorder.",
                labels=["recorder"],
            )
            for field in (
                "accepted", "written", "dropped", "retried", "spooled", "rejected",
                "dead_lettered",
            )
        }
        dropped_by_name = CounterMetricFamily(
            "rtc_events_dropped", "Events dropped by recorders, by name.", labels=["name"]
        )
        dropped_totals: dict[str, int] = {}
        for figures in self._recorders():
            depth.add_metric([figures.recorder], figures.queue_depth)
            for field, family in counters.items():
                family.add_metric([figures.recorder], getattr(figures, field))
            for name, count in figures.dropped_by_name.items():
                dropped_totals[name] = dropped_totals.get(name, 0) + count
        for name, count in sorted(dropped_totals.items()):
            dropped_by_name.add_metric([name], count)
        yield depth
        yield from counters.values()
        yield dropped_by_name


class _DocumentsCollector(Collector):
    """The document store's queue and write outcomes, read at scrape time."""

    def __init__(self, documents: Callable[[], DocumentStats]) -> None:
        self._documents = documents

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        stats = self._documents()
        yield GaugeMetricFamily(
            "rtc_document_updates_pending",
            "Document updates applied in memory, not yet written to the store.",
            value=stats.pending,
        )
        for name, value, text in (
            ("rtc_document_updates_written", stats.written, "Document updates written."),
            ("rtc_document_write_failures", stats.write_failures,
             "Document writes that failed (each is retried until it lands)."),
            ("rtc_document_compactions", stats.compactions, "Rooms compacted to one update."),
            ("rtc_document_compactions_skipped", stats.compactions_skipped,
             "Compactions left to another node holding the room's lock."),
        ):
            yield CounterMetricFamily(name, text, value=value)


class _Tally(Collector):
    """A labelled counter kept as plain integers: for counts taken on every message."""

    def __init__(self, name: str, text: str, label: str) -> None:
        self._name, self._text, self._label = name, text, label
        self.counts: dict[str, int] = {}

    def add(self, key: str, amount: int = 1) -> None:
        counts = self.counts
        counts[key] = counts.get(key, 0) + amount

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self._name, self._text, labels=[self._label])
        for key, count in sorted(self.counts.items()):
            family.add_metric([key], count)
        yield family


class _Traffic(Collector):
    """Messages and bytes by y-websocket message type, one direction."""

    def __init__(self, messages: str, size: str, verb: str) -> None:
        self._messages = _Tally(messages, f"Messages {verb}, by type.", "type")
        self._bytes = _Tally(size, f"Bytes {verb}, by type.", "type")
        for kind in (*_MESSAGE_TYPES.values(), "invalid"):  # every type shown from the start
            self._messages.counts[kind] = self._bytes.counts[kind] = 0
        self.messages, self.bytes = self._messages.counts, self._bytes.counts

    def add(self, data: bytes, copies: int) -> None:
        self.count(message_type(data), len(data), copies)

    def count(self, kind: str, size: int, copies: int = 1) -> None:
        """`kind` is one of the keys set above (what `message_type` returns)."""
        self.messages[kind] += copies
        self.bytes[kind] += size * copies

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield from self._messages.collect()
        yield from self._bytes.collect()


class Metrics:
    """The server's counters and histograms; live gauges are computed when scraped."""

    def __init__(
        self,
        live: Callable[[], LiveFigures],
        recorders: Callable[[], Iterable[RecorderFigures]],
        *,
        documents: Callable[[], DocumentStats] | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events_recorded = Counter(
            "rtc_events_recorded", "Events handed to the recorders, by name.", ["name"], registry=r
        )
        self.events_not_captured = Counter(
            "rtc_events_not_recorded",
            "Events not recorded: rejected by the streams, sampled out, or capture off.",
            ["outcome"],
            registry=r,
        )
        self.ingest = Counter(
            "rtc_ingest_events",
            "Client events received at /api/events, by outcome.",
            ["outcome"],
            registry=r,
        )
        self.recorder_failures = Counter(
            "rtc_recorder_failures", "Recorder calls that raised (and were contained).", registry=r
        )
        self.connection_errors = Counter(
            "rtc_connection_errors",
            "Abnormal connection ends, by error code.",
            ["code"],
            registry=r,
        )
        self.closes = Counter("rtc_closes", "Connection ends, by close code.", ["code"], registry=r)
        self.blocked = Counter(
            "rtc_blocked", "Sessions turned away, by limit kind.", ["limit_kind"], registry=r
        )
        self.limit_refusals = Counter(
            "rtc_limit_refusals",
            "Connections or messages refused by a server limit, by limit.",
            ["limit"],
            registry=r,
        )
        self.http_errors = Counter(
            "rtc_http_errors", "HTTP requests refused, by status.", ["status"], registry=r
        )
        self.session_duration = Histogram(
            "rtc_session_duration_seconds",
            "How long admitted sessions lasted.",
            buckets=(1, 5, 15, 60, 300, 900, 1800, 3600, 4 * 3600, 12 * 3600),
            registry=r,
        )
        self.reconnect_latency = Histogram(
            "rtc_reconnect_latency_seconds",
            "From a session's abnormal end to the same session's next join.",
            buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
            registry=r,
        )
        r.register(_LiveCollector(live, recorders))
        if documents is not None:
            r.register(_DocumentsCollector(documents))
        # Counted once or more per message: plain integers (no lock), read at scrape time.
        self._in = _Traffic("rtc_messages_in", "rtc_bytes_in", "received")
        self._out = _Traffic("rtc_messages_out", "rtc_bytes_out", "sent")
        self._notes = _Tally(
            "rtc_notes",
            "Things ignored or repaired: awareness echoes, foreign claims, replaced sessions.",
            "what",
        )
        for tally in (self._in, self._out, self._notes):
            r.register(tally)

    def note(self, what: str) -> None:
        self._notes.add(what)

    def received(self, data: bytes) -> None:
        self._in.add(data, 1)

    def received_echo(self, size: int, note: str) -> None:
        """An awareness echo arrived: an awareness message, and a note of what it was."""
        self._in.count("awareness", size)
        self._notes.add(note)

    def sent(self, data: bytes, copies: int = 1) -> None:
        self._out.add(data, copies)

    def render(self) -> bytes:
        return generate_latest(self.registry)
