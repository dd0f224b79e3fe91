"""PostgreSQL for tests: a fresh database per test on the shared server, and a throwaway server.

The shared server (127.0.0.1:5432, trust auth) is only ever asked to create and drop
databases named ``tracks_test_<random>``; nothing else on it is touched. A test that must
stop PostgreSQL uses `ThrowawayPostgres`: its own ``initdb`` in a temp directory, its own
port, stopped and started again by PID.

Use them from a conftest or test module: ``from tests.postgresql_fixtures import
postgres_url`` makes the ``postgres_url`` fixture available there.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

__all__ = [
    "SERVER",
    "ThrowawayPostgres",
    "create_database",
    "drop_database",
    "postgres_binaries",
    "postgres_url",
    "write_postgresql",
]

SERVER = os.environ.get("TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432")
"""The shared server: the admin database ``test`` is where databases are created from."""


def _admin() -> Any:
    # The suite needs PostgreSQL (README: it runs on every machine): fail, never skip, so
    # that a missing server cannot make the PostgreSQL tests pass by not running.
    import psycopg

    try:
        return psycopg.connect(f"{SERVER}/test", autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"no PostgreSQL at {SERVER} (TEST_POSTGRES): {exc}")


def create_database() -> str:
    """Create a uniquely named database on the shared server; return its URL."""
    name = f"tracks_test_{uuid.uuid4().hex[:12]}"
    with _admin() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    return f"{SERVER}/{name}"


def drop_database(url: str) -> None:
    """Drop a database `create_database` made (its connections are ended first)."""
    name = url.rsplit("/", 1)[1].split("?", 1)[0]
    assert name.startswith("tracks_test_"), name  # never anything else
    with _admin() as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty database on the shared server, dropped after the test."""
    url = create_database()
    try:
        yield url
    finally:
        drop_database(url)


def postgres_binaries() -> Path | None:
    """Debian's PostgreSQL server binaries (the newest version installed), if any."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    return Path(found[-1]).parent if found else None


class ThrowawayPostgres:
    """A PostgreSQL server of the test's own: a temp data directory, a free port.

    Runs as the ``postgres`` user when the test runs as root (initdb refuses root), in a
    directory of its own under the system temp dir (pytest's tmp_path is root's alone).
    `stop()` ends it by its PID (fast shutdown); `start()` starts it again on the same port;
    `close()` stops it and removes its directory.
    """

    def __init__(self) -> None:
        binaries = postgres_binaries()
        if binaries is None:
            pytest.skip("no PostgreSQL server binaries under /usr/lib/postgresql")
        self.bin = binaries
        self.directory = Path(tempfile.mkdtemp(prefix="tracks-pg-"))
        self.data = self.directory / "data"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._user: str | None = "postgres" if os.geteuid() == 0 else None
        if self._user is not None:
            shutil.chown(self.directory, self._user, self._user)
        subprocess.run(
            [str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres",
             "-A", "trust", "--no-sync", "-E", "UTF8"],
            check=True, capture_output=True, user=self._user, timeout=60,
        )

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        if self.port == 0:
            # The server binds the port itself; the socket is only released here for it.
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                self.port = probe.getsockname()[1]
        self.process = subprocess.Popen(
            [str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port),
             "-h", "127.0.0.1", "-k", str(self.directory), "-c", "fsync=off",
             "-c", "full_page_writes=off"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, user=self._user,
        )
        self._wait_ready(self.process)

    def _wait_ready(self, process: subprocess.Popen[bytes]) -> None:
        """Read the server's log until it says it is ready (or it ends), then keep draining
        it on a thread so the server never blocks on a full pipe."""
        assert process.stderr is not None
        log = []
        for line in iter(process.stderr.readline, b""):
            log.append(line)
            if b"ready to accept connections" in line:
                threading.Thread(
                    target=lambda: process.stderr.read() if process.stderr else None, daemon=True
                ).start()
                return
        process.wait(timeout=10)
        raise RuntimeError(f"throwaway PostgreSQL did not start: {b''.join(log)[-2000:]!r}")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGINT)  # fast shutdown: ends sessions, no wait
            process.wait(timeout=30)

    def close(self) -> None:
        self.stop()
        with contextlib.suppress(OSError):
            shutil.rmtree(self.directory)


def write_postgresql(url: str, events: Iterable[Any]) -> int:
    """Store ``events`` (`tracks.Event`) at ``url`` as the PostgreSQL recorder does: the
    store migrated, the months' partitions created, one batch; return how many were new."""
    from tracks.presence import postgresql_schema as schema
    from tracks.presence import postgresql_writing as writing

    psycopg = pytest.importorskip("psycopg")
    batch = list(events)
    target = schema.parse_url(url)

    async def run() -> int:
        async with await psycopg.AsyncConnection.connect(
            target.conninfo, autocommit=True
        ) as connection:
            await schema.amigrate(connection, target.schema)
            months = {bounds for event in batch if (bounds := writing.month_bounds(event.ts))}
            await writing.aensure_partitions(connection, target.schema, months)
            return await writing.ainsert_events(connection, batch) if batch else 0

    return asyncio.run(run())
