"""Three real `rtc serve --cluster` nodes behind a real HAProxy running deploy/haproxy.cfg,
trusting it (`--forwarded-allow-ips 127.0.0.1`): per-IP caps and the ingest rate limit count
real client addresses (clients bound to 127.0.0.2 and 127.0.0.3: Linux routes all of 127/8 to
loopback), a direct client's spoofed X-Forwarded-For counts for nothing, and y-websocket
clients spread over the nodes share one document and one roster.

The caps are each node's own (counts in memory): behind a round-robin balancer over N nodes a
client address may hold up to N x `--max-connections-per-ip` connections, one cap per node.
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus

from tests.cluster.harness import HAPROXY_CFG, balancer, cluster_nodes, render_haproxy, room_json
from tests.jsclient import NodeClients
from tests.redis_fixtures import ThrowawayRedis
from tests.rtc.clients import TIMEOUT, RawClient

pytestmark = [pytest.mark.slow]

ROOM = "7/42"
TRUSTED = ("--forwarded-allow-ips", "127.0.0.1")
_sessions = itertools.count(1001)
ALICE = "127.0.0.2"  # two client machines, as far as anyone can tell
BOB = "127.0.0.3"


def test_deploy_haproxy_cfg_is_valid_as_shipped_and_as_rendered(tmp_path: Path) -> None:
    binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not Path(binary).exists():
        pytest.fail("haproxy is not installed (make setup-test installs it)")
    rendered = tmp_path / "haproxy.cfg"
    rendered.write_text(render_haproxy(HAPROXY_CFG.read_text(), 18000, [18001, 18002, 18003]))
    for config in (HAPROXY_CFG, rendered):
        check = subprocess.run([binary, "-c", "-f", str(config)], capture_output=True,
                               timeout=TIMEOUT, check=False)
        assert check.returncode == 0, check.stderr.decode()
    text = rendered.read_text()
    assert "bind 127.0.0.1:18000" in text
    assert [line.split()[2] for line in text.splitlines() if line.split()[:1] == ["server"]] == [
        "127.0.0.1:18001", "127.0.0.1:18002", "127.0.0.1:18003"
    ]


async def _statuses(
    held: AsyncExitStack, url: str, source: str, count: int, **headers: str
) -> list[int]:
    """Open `count` room WebSockets from `source`, one after another: 101 for each one
    admitted (kept open in `held`), else the status it was refused with."""
    statuses = []
    for _ in range(count):
        try:
            client = await held.enter_async_context(RawClient.connect(
                url, local_addr=(source, 0), additional_headers=headers))
        except InvalidStatus as refused:
            statuses.append(refused.response.status_code)
            continue
        # Admitted to the room, answered: it is counted before the next one is opened.
        session = next(_sessions)
        await client.enter(session, user=session)
        statuses.append(101)
    return statuses


async def test_per_ip_cap_counts_each_real_client_through_haproxy(
    tmp_path: Path, redis_server: ThrowawayRedis, postgres_url: str
) -> None:
    async with (
        cluster_nodes(tmp_path, redis_server.url, postgres_url, *TRUSTED,
                      "--max-connections-per-ip", "1") as nodes,
        balancer(nodes) as proxy,
        AsyncExitStack() as held,
    ):
        url = proxy.room_url()
        # Round robin: one of Alice's connections on each node, then node1 again: refused
        # there, where her address already has its one connection.
        assert await _statuses(held, url, ALICE, 4) == [101, 101, 101, 429]
        # Bob is another client, though HAProxy (127.0.0.1) is the peer of both.
        assert await _statuses(held, url, BOB, 1) == [101]
        refusal = await nodes[0].wait_log(r"HTTP 429 for GET /rooms/7/42 from ")
        assert f"from {ALICE}:" in refusal


async def test_a_direct_client_is_counted_by_its_own_address_whatever_it_claims(
    tmp_path: Path, redis_server: ThrowawayRedis, postgres_url: str
) -> None:
    async with (
        cluster_nodes(tmp_path, redis_server.url, postgres_url, *TRUSTED,
                      "--max-connections-per-ip", "1", count=1) as nodes,
        AsyncExitStack() as held,
    ):
        url = nodes[0].room_url()
        assert await _statuses(held, url, ALICE, 1) == [101]
        # Alice, straight to the node, says she forwards for someone else: she is not a
        # trusted proxy, so her headers are ignored and she is refused as herself.
        spoofed = {"X-Forwarded-For": "198.51.100.7", "Forwarded": "for=198.51.100.7"}
        assert await _statuses(held, url, ALICE, 1, **spoofed) == [429]
        # Nor can she pass for Bob and use up his allowance.
        assert await _statuses(held, url, ALICE, 1, **{"X-Forwarded-For": BOB}) == [429]
        assert await _statuses(held, url, BOB, 1) == [101]
        refusal = await nodes[0].wait_log(r"HTTP 429 for GET /rooms/7/42 from ")
        assert f"from {ALICE}:" in refusal


def _client_error(session_id: int) -> dict[str, object]:
    return {
        "name": "jetpack_rtc_connection_error",
        "ts": int(time.time() * 1000),
        "props": {"blog_id": 7, "post_id": 42, "session_id": session_id,
                  "error_code": "dns-failure"},
    }


async def _ingest(url: str, source: str, count: int) -> list[int]:
    transport = httpx.AsyncHTTPTransport(local_address=source)
    async with httpx.AsyncClient(transport=transport, timeout=TIMEOUT) as http:
        return [
            (await http.post(f"{url}/api/events",
                             json={"events": [_client_error(n)]})).status_code
            for n in range(count)
        ]


async def test_ingest_rate_limit_counts_each_real_client_through_haproxy(
    tmp_path: Path, redis_server: ThrowawayRedis, postgres_url: str
) -> None:
    async with (
        cluster_nodes(tmp_path, redis_server.url, postgres_url, *TRUSTED,
                      "--ingest-rate", "0.001", "--ingest-burst", "1") as nodes,
        balancer(nodes) as proxy,
    ):
        # One batch per node for Alice (round robin), then node1's bucket for her is empty.
        assert await _ingest(proxy.http_url, ALICE, 4) == [202, 202, 202, 429]
        assert await _ingest(proxy.http_url, BOB, 1) == [202]
        refusal = await nodes[0].wait_log(r"HTTP 429 for POST /api/events from ")
        assert f"from {ALICE}:" in refusal


def _served_by(roster: dict[str, Any]) -> dict[int, str]:
    return {s["session_id"]: s["node"] for c in roster["contributors"] for s in c["sessions"]}


@pytest.mark.node
async def test_clients_through_haproxy_converge_and_share_one_roster(
    tmp_path: Path, redis_server: ThrowawayRedis, postgres_url: str
) -> None:
    async with (
        cluster_nodes(tmp_path, redis_server.url, postgres_url, *TRUSTED) as nodes,
        balancer(nodes) as proxy,
        NodeClients() as node,
    ):
        clients = [
            await node.open(proxy.ws_url + "/rooms", ROOM, user={"id": n, "name": f"User {n}"})
            for n in (1, 2, 3)
        ]
        for client in clients:
            await client.wait_synced()
        everyone = {client.client_id for client in clients}
        for client in clients:
            await client.wait_awareness(lambda states: everyone <= set(states))
        for index, client in enumerate(clients):
            await client.insert(0, f"{index}")
        for client in clients:
            await client.wait_for(lambda state: sorted(state.text) == ["0", "1", "2"])
        rosters = [await room_json(server) for server in nodes]
        assert all(r["contributors"] == rosters[0]["contributors"] for r in rosters), rosters
        assert [c["id"] for c in rosters[0]["contributors"]] == [1, 2, 3]
        # Round robin spread them: one on each node, no stickiness needed.
        assert sorted(_served_by(rosters[0]).values()) == ["node1", "node2", "node3"]
        assert set(_served_by(rosters[0])) == everyone
