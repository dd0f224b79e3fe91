"""A server reachable from other machines says, at start-up, what it leaves open."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from rtc.config import ServerConfig

from .clients import TIMEOUT

SECRET = "s" * 32


@pytest.mark.parametrize(
    ("host", "beyond"),
    [("127.0.0.1", False), ("127.9.9.9", False), ("::1", False), ("localhost", False),
     ("0.0.0.0", True), ("::", True), ("192.0.2.7", True), ("rtc.example", True)],
)
def test_which_hosts_are_reachable_from_other_machines(host: str, beyond: bool) -> None:
    assert ServerConfig(host=host).listens_beyond_loopback is beyond


def test_the_production_profile_leaves_nothing_open() -> None:
    assert len(ServerConfig().exposures()) == 6
    assert "--max-document-size is 0 (unlimited)" in ServerConfig(max_document_size=0).exposures()
    closed = ServerConfig(
        secret=SECRET, allowed_origins=("https://example.com",), max_connections_per_ip=50,
        max_connections=10_000, max_rooms=5_000, max_connections_per_room=50,
    )
    assert closed.exposures() == []


@pytest.mark.slow
async def test_start_up_lists_what_is_open_when_listening_beyond_loopback(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "rtc", "serve", "--host", "0.0.0.0", "--port", "0",
               "--data-dir", str(tmp_path), "--max-rooms", "10"]
    env = {**os.environ, "RTC_LOG_LEVEL": "WARNING"}
    async with await anyio.open_process(command, stdout=subprocess.PIPE, env=env) as process:
        assert process.stdout is not None
        output = b""
        with anyio.fail_after(TIMEOUT):
            while b"production profile" not in output:  # bounded by the timeout
                output += await process.stdout.receive()
        process.send_signal(signal.SIGTERM)
        with anyio.fail_after(TIMEOUT):
            await process.wait()
    text = output.decode()
    assert "listening on 0.0.0.0, reachable from other machines" in text
    assert "- no --secret" in text
    assert "- no --allowed-origin" in text
    assert "- --max-connections-per-ip is 0 (unlimited)" in text
    assert "--max-rooms is 0" not in text
