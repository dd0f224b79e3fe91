"""Redis for tests: a throwaway ``redis-server`` per test, on a free port, in a temp directory.

The machine's shared Redis (127.0.0.1:6379) is never touched: a cluster test may stop and
restart Redis, so every test runs its own, started here and stopped by its PID. It keeps
nothing on disk (``--save ""``, no AOF), so a restart is an empty Redis, as after a crash.

Use it from a conftest or test module: ``from tests.redis_fixtures import redis_server``
makes the ``redis_server`` fixture available there.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["ThrowawayRedis", "redis_binary", "redis_server"]

START_TIMEOUT = 10.0


def redis_binary() -> str:
    """The `redis-server` to run (the test set-up installs Debian's package)."""
    found = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None
    )
    if found is None:
        pytest.fail("redis-server is not installed (make setup-test installs it)")
    return found


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ThrowawayRedis:
    """A `redis-server` of the test's own: `start()`, `stop()` (by PID), `start()` again on
    the same port (empty, as after a crash)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = _free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        if self.running:
            return
        self._process = subprocess.Popen(
            [
                redis_binary(),
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--dir", str(self.directory),
                "--save", "",
                "--appendonly", "no",
                "--daemonize", "no",
                "--loglevel", "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:  # bounded: until it accepts a connection
            if self._process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self._process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.02)  # noqa: sleep-ok - polls redis-server's port, another process
        raise RuntimeError(f"redis-server did not answer on port {self.port}")

    def stop(self) -> None:
        """Stop it at once (SIGKILL: what a crash looks like to its clients)."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=START_TIMEOUT)


@pytest.fixture
def redis_server() -> Iterator[ThrowawayRedis]:
    """A running throwaway Redis for this test, stopped afterwards."""
    with tempfile.TemporaryDirectory(prefix="rtc-redis-") as directory:
        server = ThrowawayRedis(Path(directory))
        server.start()
        try:
            yield server
        finally:
            server.stop()
