"""The cluster's figures on `/metrics`: Redis round trips, stream lag, resynchronisations,
reaped sessions, nodes alive and admissions by outcome."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["ClusterFigures", "ClusterMetrics"]


@dataclass(frozen=True, slots=True)
class ClusterFigures:
    """What the node knows when scraped."""

    available: bool
    nodes_alive: int
    lag_ms: float
    entries_read: int
    entries_published: int
    entries_dropped: int
    entries_malformed: int


class _Collector(Collector):
    def __init__(self, figures: Callable[[], ClusterFigures]) -> None:
        self._figures = figures

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        f = self._figures()
        yield GaugeMetricFamily(
            "rtc_cluster_available", "1 while Redis answers this node.", value=int(f.available)
        )
        yield GaugeMetricFamily(
            "rtc_cluster_nodes_alive", "Nodes heartbeating, as last seen.", value=f.nodes_alive
        )
        yield GaugeMetricFamily(
            "rtc_cluster_stream_lag_seconds",
            "How far behind the newest room stream entry this node read is, at most.",
            value=f.lag_ms / 1000,
        )
        for name, value, text in (
            ("rtc_cluster_entries_read", f.entries_read, "Room stream entries read."),
            ("rtc_cluster_entries_published", f.entries_published, "Room stream entries written."),
            ("rtc_cluster_entries_dropped", f.entries_dropped,
             "Room stream entries not written (Redis down): recovered by a resynchronisation."),
            ("rtc_cluster_entries_malformed", f.entries_malformed,
             "Room stream entries skipped as malformed."),
        ):
            yield CounterMetricFamily(name, text, value=value)


class ClusterMetrics:
    """Counters kept by the node, registered on the server's registry."""

    def __init__(self, registry: CollectorRegistry, figures: Callable[[], ClusterFigures]):
        r = registry
        self.redis_rtt = Histogram(
            "rtc_cluster_redis_rtt_seconds",
            "Round trips to Redis (heartbeats, admissions, leaves).",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
            registry=r,
        )
        self.admissions = Counter(
            "rtc_cluster_admissions", "Admissions decided by the cluster, by outcome.",
            ["outcome"], registry=r,
        )
        self.resyncs = Counter(
            "rtc_cluster_resyncs", "Rooms resynchronised with the other nodes.", registry=r
        )
        self.reaped = Counter(
            "rtc_cluster_sessions_reaped", "Sessions of lost nodes reaped by this node.",
            registry=r,
        )
        self.nodes_reaped = Counter(
            "rtc_cluster_nodes_reaped", "Nodes found dead and reaped by this node.", registry=r
        )
        self.transitions = Counter(
            "rtc_cluster_transitions",
            "Redis availability changes seen by this node, by new state.",
            ["state"], registry=r,
        )
        r.register(_Collector(figures))
