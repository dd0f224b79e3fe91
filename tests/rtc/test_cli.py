"""`rtc serve` as a process: start-up lines, SIGTERM, the default SQLite event store."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from tracks import read_events

from .clients import TIMEOUT, RawClient

pytestmark = pytest.mark.slow


async def test_sigterm_closes_peers_with_1001_and_flushes_events(tmp_path: Path) -> None:
    env = {**os.environ, "RTC_MAX_CONTRIBUTORS": "5", "RTC_LOG_LEVEL": "WARNING"}
    async with await anyio.open_process(
        [sys.executable, "-m", "rtc", "serve", "--port", "0", "--data-dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    ) as process:
        assert process.stdout is not None
        output = b""
        with anyio.fail_after(TIMEOUT):
            while b"Events:" not in output:  # bounded by the timeout
                output += await process.stdout.receive()
        text = output.decode()
        port = re.search(r"ws://127\.0\.0\.1:(\d+)/rooms/\{blog_id\}/\{post_id\}", text)
        assert port is not None, text
        assert f"sqlite://{tmp_path}/events.sqlite" in text
        assert "Demo:      http://127.0.0.1:" in text

        async with RawClient.connect(f"ws://127.0.0.1:{port.group(1)}/rooms/3/9") as client:
            await client.join(4242, user=12)
            await client.barrier()
            process.send_signal(signal.SIGTERM)
            code, _ = await client.closed()
            assert code == 1001
        with anyio.fail_after(TIMEOUT):
            assert await process.wait() == 0

    events = list(read_events(tmp_path / "events.sqlite"))
    assert [(e.name, e.props["session_id"]) for e in events] == [
        ("jetpack_rtc_join", 4242),
        ("jetpack_rtc_leave", 4242),
    ]
    assert events[1].props["clean"] is True


def test_bad_environment_fails_fast_with_the_variable_named(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "rtc", "serve", "--data-dir", str(tmp_path)],
        env={**os.environ, "RTC_PORT": "eighty"},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 2
    assert "RTC_PORT='eighty' is not a valid int" in result.stderr


def test_help_explains_every_flag() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "rtc", "serve", "--help"],
        capture_output=True, text=True, timeout=TIMEOUT, check=True,
    )
    for flag in ("--host", "--port", "--data-dir", "--recorder", "--max-contributors",
                 "--max-connections-per-room", "--log-level", "RTC_MAX_CONTRIBUTORS"):
        assert flag in result.stdout
