"""`python -m rtc serve` as a subprocess on 127.0.0.1, for tests that need a real process.

Readiness comes from the start-up lines the server prints; its log (stderr) is read all
along, so a test can wait for a log line instead of sleeping.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
from anyio.abc import ByteReceiveStream, Process

from .clients import TIMEOUT

_PORT = re.compile(rb"rtc listening on http://127\.0\.0\.1:(\d+)")


class ServerProcess:
    """A running `rtc serve`: its port, its output, and ways to end it."""

    def __init__(self, process: Process, data_dir: Path) -> None:
        self.process = process
        self.data_dir = data_dir
        self.port = 0
        self.log: deque[str] = deque(maxlen=10_000)  # the last lines of stderr
        self._line = anyio.Event()
        self._stdout = b""

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def room_url(self, blog_id: int = 7, post_id: int = 42) -> str:
        return f"ws://127.0.0.1:{self.port}/rooms/{blog_id}/{post_id}"

    async def wait_log(self, pattern: str) -> str:
        """The first stderr line (kept in `log`) matching `pattern`, waiting for it if need be."""
        regex = re.compile(pattern)
        with anyio.fail_after(TIMEOUT):
            while True:  # bounded by the timeout; wakes on every line
                for line in self.log:
                    if regex.search(line):
                        return line
                await self._line.wait()

    async def terminate(self) -> int:
        """SIGTERM, then the exit code."""
        self.process.send_signal(signal.SIGTERM)
        with anyio.fail_after(TIMEOUT):
            return await self.process.wait()

    async def kill(self) -> None:
        """SIGKILL: no flush, no goodbye."""
        self.process.kill()
        with anyio.fail_after(TIMEOUT):
            await self.process.wait()

    async def _read_stdout(self, stream: ByteReceiveStream, ready: anyio.Event) -> None:
        async for chunk in stream:
            if not ready.is_set():
                self._stdout += chunk
                match = _PORT.search(self._stdout)
                if match and b"Events:" in self._stdout:
                    self.port = int(match.group(1))
                    ready.set()

    async def _read_stderr(self, stream: ByteReceiveStream) -> None:
        pending = b""
        async for chunk in stream:
            pending += chunk
            *lines, pending = pending.split(b"\n")
            self.log.extend(line.decode(errors="replace") for line in lines)
            if lines:
                self._line.set()
                self._line = anyio.Event()


@asynccontextmanager
async def rtc_process(
    data_dir: Path,
    *args: str,
    env: dict[str, str] | None = None,
    rtc: Sequence[str] = (sys.executable, "-m", "rtc"),
    cwd: Path | None = None,
) -> AsyncIterator[ServerProcess]:
    """Run `RTC serve --port 0 --data-dir DATA_DIR ARGS...` until the block ends.

    Args:
        data_dir: the server's data folder.
        args: more `rtc serve` flags.
        env: variables that override this process's environment.
        rtc: the command that is `rtc` (by default this interpreter's `python -m rtc`; an
            installed `rtc` script for the wheel test).
        cwd: where it runs (by default here).

    Left running at the end of the block, it is stopped with SIGTERM (then SIGKILL).
    """
    command = [*rtc, "serve", "--port", "0", "--data-dir", str(data_dir), *args]
    process = await anyio.open_process(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )
    server = ServerProcess(process, data_dir)
    ready = anyio.Event()
    async with process, anyio.create_task_group() as tg:
        assert process.stdout is not None
        assert process.stderr is not None
        tg.start_soon(server._read_stdout, process.stdout, ready)
        tg.start_soon(server._read_stderr, process.stderr)
        try:
            with anyio.fail_after(TIMEOUT):
                await ready.wait()
            yield server
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
                with anyio.move_on_after(TIMEOUT, shield=True):
                    await process.wait()
                if process.returncode is None:
                    process.kill()
                    with anyio.CancelScope(shield=True):
                        await process.wait()
