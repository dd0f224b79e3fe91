"""Cluster tests' parts: N real `rtc serve --cluster` nodes on one throwaway Redis and one
fresh PostgreSQL database, optionally behind a real HAProxy, and reads of the shared event
store.

    async with cluster_nodes(tmp_path, redis_url, postgres_url, count=3) as nodes:
        ...  # nodes[0].room_url(), nodes[1].http_url ...
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from tests.rtc.clients import TIMEOUT
from tests.rtc.processes import ServerProcess, rtc_process

__all__ = [
    "HAPROXY_CFG",
    "Balancer",
    "balancer",
    "cluster_nodes",
    "events",
    "node_args",
    "render_haproxy",
    "start_node",
]

NODE_TIMEOUT = 2.0  # seconds: short, so that a lost node is reaped within a test


def node_args(
    redis_url: str, postgres_url: str, node_id: str, *extra: str, timeout: float = NODE_TIMEOUT
) -> list[str]:
    return [
        "--cluster", redis_url,
        "--node-id", node_id,
        "--node-timeout", str(timeout),
        "--documents", postgres_url,
        "--recorder", postgres_url,
        "--room-grace", "0.5",
        "--log-level", "INFO",
        *extra,
    ]


@asynccontextmanager
async def start_node(
    data_dir: Path, redis_url: str, postgres_url: str, node_id: str, *extra: str
) -> AsyncIterator[ServerProcess]:
    await anyio.Path(data_dir).mkdir(parents=True, exist_ok=True)
    async with rtc_process(data_dir, *node_args(redis_url, postgres_url, node_id, *extra)) as node:
        yield node


@asynccontextmanager
async def cluster_nodes(
    tmp_path: Path, redis_url: str, postgres_url: str, *extra: str, count: int = 3
) -> AsyncIterator[list[ServerProcess]]:
    """`count` nodes named node1..nodeN, started one after another (the first records the
    shared settings), stopped at the end of the block."""
    async with contextlib.AsyncExitStack() as stack:
        nodes = [
            await stack.enter_async_context(
                start_node(tmp_path / f"node{index}", redis_url, postgres_url,
                           f"node{index}", *extra)
            )
            for index in range(1, count + 1)
        ]
        yield nodes


async def room_json(node: ServerProcess, blog_id: int = 7, post_id: int = 42) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        response = await client.get(f"{node.http_url}/api/rooms/{blog_id}/{post_id}")
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result


def events(postgres_url: str, name: str | None = None) -> list[dict[str, Any]]:
    """The events in the shared store, oldest first (props with the promoted columns)."""
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as connection:
        rows = connection.execute(
            "SELECT name, props FROM events_json ORDER BY ts, name"
        ).fetchall()
    found = [{"name": row[0], **(row[1] if isinstance(row[1], dict) else json.loads(row[1]))}
             for row in rows]
    return [event for event in found if name is None or event["name"] == name]


# --- HAProxy ---------------------------------------------------------------------------


HAPROXY_CFG = Path(__file__).resolve().parents[2] / "deploy" / "haproxy.cfg"


def render_haproxy(template: str, port: int, backends: Sequence[int]) -> str:
    """deploy/haproxy.cfg listening on 127.0.0.1:`port`, over nodes on these ports."""
    lines: list[str] = []
    servers = [f"    server node{index} 127.0.0.1:{backend}"
               for index, backend in enumerate(backends, start=1)]
    for line in template.splitlines():
        words = line.split()
        if words[:1] == ["bind"]:
            lines.append(f"    bind 127.0.0.1:{port}")
        elif words[:1] == ["server"]:
            lines.extend(servers)
            servers = []  # in place of the first one; the others go
        else:
            lines.append(line)
    if servers:
        raise ValueError("deploy/haproxy.cfg has no server line to replace")
    return "\n".join(lines) + "\n"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Balancer:
    """A real HAProxy round-robin over some nodes: deploy/haproxy.cfg, the operators' own file,
    with only its `bind` port and its `server` lines replaced by the test's."""

    def __init__(self, directory: Path, backends: Sequence[int]) -> None:
        self.port = _free_port()
        self.directory = directory
        self.backends = list(backends)
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def room_url(self, blog_id: int = 7, post_id: int = 42) -> str:
        return f"ws://127.0.0.1:{self.port}/rooms/{blog_id}/{post_id}"

    def config(self) -> str:
        return render_haproxy(HAPROXY_CFG.read_text(), self.port, self.backends)

    def start(self) -> None:
        binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
        if not Path(binary).exists():
            pytest.fail("haproxy is not installed (make setup-test installs it)")
        config = self.directory / "haproxy.cfg"
        config.write_text(self.config())
        with (self.directory / "haproxy.log").open("wb") as log:  # its log, for a failure
            self._process = subprocess.Popen(
                [binary, "-f", str(config), "-db"], stdout=log, stderr=subprocess.STDOUT,
            )

    async def wait_ready(self) -> None:
        with anyio.fail_after(TIMEOUT):
            while True:  # bounded by the timeout: until it accepts connections
                try:
                    stream = await anyio.connect_tcp("127.0.0.1", self.port)
                except OSError:
                    await anyio.sleep(0.05)  # noqa: sleep-ok - polls HAProxy's port, another process
                    continue
                await stream.aclose()
                return

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            process.wait(timeout=TIMEOUT)


@contextlib.contextmanager
def _temp_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="rtc-haproxy-") as directory:
        yield Path(directory)


@asynccontextmanager
async def balancer(nodes: Sequence[ServerProcess]) -> AsyncIterator[Balancer]:
    with _temp_dir() as directory:
        proxy = Balancer(directory, [node.port for node in nodes])
        proxy.start()
        try:
            await proxy.wait_ready()
            yield proxy
        finally:
            proxy.stop()
