"""Cluster-wide reads for the HTTP API: the shared roster and this node's view of the cluster.

The rosters come from Redis (`rtc.cluster.registry`), so every node gives the same answer;
the JSON is built by the pure `rtc.http.roster` and `rtc.http.stats` functions. The health
report reads nothing from Redis: it says what the node's heartbeat last saw, so that a load
balancer's frequent checks stay cheap and a node keeps answering 200 while Redis is down
(its editors carry on).
"""

from __future__ import annotations

import logging
from typing import Protocol

import anyio
from redis.exceptions import RedisError

from rtc.cluster.outcomes import Registration
from rtc.cluster.registry import Registry
from rtc.errors import ClusterUnavailableError
from rtc.ids import RoomKey
from tracks import JSONValue

__all__ = ["READ_TIMEOUT", "ClusterReads", "ClusterState"]

logger = logging.getLogger(__name__)

READ_TIMEOUT = 2.0
"""Seconds a roster read may take before the request is answered 503."""


class ClusterState(Protocol):
    """What the reads need of this node (`rtc.cluster.node.ClusterNode` is one)."""

    @property
    def node_id(self) -> str: ...

    @property
    def registry(self) -> Registry: ...

    @property
    def available(self) -> bool: ...

    @property
    def nodes_alive(self) -> int: ...


class ClusterReads:
    """The shared roster, read for one request at a time.

    Args:
        cluster: this node.
        timeout: seconds a read may take.
    """

    def __init__(self, cluster: ClusterState, *, timeout: float = READ_TIMEOUT) -> None:
        if not timeout > 0:
            raise ValueError("timeout must be > 0")
        self._cluster = cluster
        self._timeout = timeout

    @property
    def node_id(self) -> str:
        return self._cluster.node_id

    async def rooms(self) -> dict[RoomKey, list[Registration]]:
        """Every room with a session on any node, with its sessions.

        Raises:
            ClusterUnavailableError: Redis did not answer in time.
        """
        try:
            with anyio.fail_after(self._timeout):
                return await self._cluster.registry.rooms()
        except (RedisError, OSError, TimeoutError) as error:
            raise _unavailable(error) from None

    async def roster(self, key: RoomKey) -> list[Registration]:
        """A room's sessions on every node, by joining time.

        Raises:
            ClusterUnavailableError: Redis did not answer in time.
        """
        try:
            with anyio.fail_after(self._timeout):
                return await self._cluster.registry.roster(key)
        except (RedisError, OSError, TimeoutError) as error:
            raise _unavailable(error) from None

    def health(self) -> dict[str, JSONValue]:
        """This node and the cluster as its last heartbeat saw it (no Redis round trip)."""
        cluster = self._cluster
        return {
            "node": cluster.node_id,
            "cluster": {
                "redis": cluster.available,
                "nodes_alive": cluster.nodes_alive,
            },
        }


def _unavailable(error: BaseException) -> ClusterUnavailableError:
    logger.info("cluster read failed: Redis did not answer (%s)", error or type(error).__name__)
    return ClusterUnavailableError("the cluster's Redis does not answer; try again shortly")
