"""`rtc serve --workers N` as real processes: one supervisor, N cluster-node workers on one
listening socket, one throwaway Redis and one fresh PostgreSQL database."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import httpx
import pytest

from rtc.workers import Backoff
from tests.cluster.harness import node_args
from tests.redis_fixtures import ThrowawayRedis
from tests.rtc.clients import TIMEOUT
from tests.rtc.processes import ServerProcess, rtc_process

BASE = "wtest"
_STARTED = r"worker {index} started: pid (\d+), node (\S+)"


def _group(tmp_path: Path, redis_url: str, postgres_url: str) -> list[str]:
    return node_args(redis_url, postgres_url, BASE, "--workers", "2")


async def _pid(server: ServerProcess, index: int, node: str) -> int:
    line = await server.wait_log(_STARTED.format(index=index) + "$")
    match = re.search(_STARTED.format(index=index), line)
    assert match is not None
    assert match.group(2) == node, line
    return int(match.group(1))


async def _nodes_answering(server: ServerProcess, wanted: set[str], tries: int = 400) -> set[str]:
    """The node ids that answer /healthz over fresh connections, until all of `wanted` did
    (at most `tries` connections)."""
    seen: set[str] = set()
    with anyio.fail_after(TIMEOUT * 3):
        for _ in range(tries):
            async with httpx.AsyncClient(timeout=TIMEOUT) as client:  # a new connection
                response = await client.get(f"{server.http_url}/healthz")
            response.raise_for_status()
            seen.add(response.json()["node"])
            if wanted <= seen:
                break
    return seen


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
async def test_two_workers_share_the_port_and_a_killed_one_is_restarted(
    tmp_path: Path, redis_server: ThrowawayRedis, postgres_url: str
) -> None:
    async with rtc_process(tmp_path, *_group(tmp_path, redis_server.url, postgres_url)) as server:
        # One banner for the group, naming both workers.
        banner = server._stdout.decode()
        assert banner.count("rtc listening on http://127.0.0.1:") == 1, banner
        assert f"  Workers:   2 processes sharing the port: {BASE}-w1, {BASE}-w2" in banner, (
            banner
        )
        first = await _pid(server, 1, f"{BASE}-w1")
        await _pid(server, 2, f"{BASE}-w2")

        both = {f"{BASE}-w1", f"{BASE}-w2"}
        assert await _nodes_answering(server, both) == both

        os.kill(first, signal.SIGKILL)
        died = await server.wait_log(r"worker 1 \(node wtest-w1\) exited with SIGKILL")
        assert "restarting it in 0.5 s (restart 1)" in died
        ready = await server.wait_log(r"worker 1 restarted and ready: pid \d+, node wtest-w1-r1")
        assert "(1 restart(s) so far)" in ready
        again = {f"{BASE}-w1-r1", f"{BASE}-w2"}
        assert again <= await _nodes_answering(server, again)
        assert not _alive(first)


@pytest.mark.slow
async def test_sigterm_stops_every_worker_and_exits_0(
    tmp_path: Path, redis_server: ThrowawayRedis, postgres_url: str
) -> None:
    async with rtc_process(tmp_path, *_group(tmp_path, redis_server.url, postgres_url)) as server:
        pids = [await _pid(server, 1, f"{BASE}-w1"), await _pid(server, 2, f"{BASE}-w2")]
        assert all(_alive(pid) for pid in pids)
        assert await server.terminate() == 0
        assert not any(_alive(pid) for pid in pids)
        stopped = await server.wait_log(r"workers stopped \(exit codes")
        assert "[0, 0]" in stopped, stopped
        assert "0 restart(s)" in stopped, stopped


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
async def test_workers_stop_when_the_supervisor_is_killed(
    tmp_path: Path, redis_server: ThrowawayRedis, postgres_url: str
) -> None:
    async with rtc_process(tmp_path, *_group(tmp_path, redis_server.url, postgres_url)) as server:
        pids = [await _pid(server, 1, f"{BASE}-w1"), await _pid(server, 2, f"{BASE}-w2")]
        await server.kill()  # SIGKILL: nothing forwarded; the workers see their lifeline end
        with anyio.fail_after(TIMEOUT):
            while True:  # bounded by the timeout
                if not any(_running(pid) for pid in pids):
                    break
                # No event crosses from processes that are not our children: poll their state.
                await anyio.sleep(0.05)  # noqa: sleep-ok


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan is reaped by whatever adopted it, maybe never)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def test_workers_without_cluster_exit_2_with_the_reason(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "rtc", "serve", "--port", "0", "--data-dir", str(tmp_path),
         "--workers", "2"],
        capture_output=True, text=True, timeout=TIMEOUT, check=False,
    )
    assert result.returncode == 2
    assert "--workers above 1 needs --cluster" in result.stderr
    assert "rtc listening" not in result.stdout


@pytest.mark.parametrize(
    ("previous", "lived", "expected"),
    [
        (None, 0.1, 0.5),  # the first restart
        (0.5, 0.1, 1.0),  # dying young: doubling
        (16.0, 3.0, 30.0),  # capped
        (30.0, 3.0, 30.0),
        (30.0, 60.0, 0.5),  # lived a minute: not a crash loop, start again from the first
    ],
)
def test_backoff_doubles_to_the_cap_and_resets_after_a_long_life(
    previous: float | None, lived: float, expected: float
) -> None:
    assert Backoff().delay(previous, lived) == expected
