"""PostgreSQL for tests: a fresh database per test on the shared server, and a throwaway server.

The shared server (127.0.0.1:5432, trust auth) is only ever asked to create and drop
databases named ``tracks_test_<random>``; nothing else on it is touched. A test that must
stop PostgreSQL uses `ThrowawayPostgres`: its own ``initdb`` in a temp directory, its own
port, stopped and started again by PID.

Use them from a conftest or test module: ``from tests.postgresql_fixtures import
postgres_url`` makes the ``postgres_url`` fixture available there.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import uuid
from collections.abc import Iterator
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
]

SERVER = os.environ.get("TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432")
"""The shared server: the admin database ``test`` is where databases are created from."""


def _admin() -> Any:
    psycopg = pytest.importorskip("psycopg")
    try:
        return psycopg.connect(f"{SERVER}/test", autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:  # pragma: no cover - CI always has it
        pytest.skip(f"no PostgreSQL at {SERVER}: {exc}")


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

    Runs as the ``postgres`` user when the test runs as root (initdb refuses root).
    `stop()` ends it by its PID (fast shutdown); `start()` starts it again on the same port.
    """

    def __init__(self, directory: Path) -> None:
        binaries = postgres_binaries()
        if binaries is None:
            pytest.skip("no PostgreSQL server binaries under /usr/lib/postgresql")
        self.bin = binaries
        self.directory = directory
        self.data = directory / "data"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._user: str | None = "postgres" if os.geteuid() == 0 else None
        if self._user is not None:
            shutil.chown(directory, self._user, self._user)
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
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, user=self._user,
        )
        self.wait_ready()

    def wait_ready(self, timeout: float = 15.0) -> None:
        psycopg = pytest.importorskip("psycopg")
        ready = subprocess.run(
            [str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port),
             "-t", str(int(timeout))],
            capture_output=True, check=False, timeout=timeout + 5,
        )
        if ready.returncode != 0:
            raise RuntimeError(f"throwaway PostgreSQL did not start: {ready.stdout!r}")
        with psycopg.connect(self.url, connect_timeout=5):
            pass

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGINT)  # fast shutdown: ends sessions, no wait
            process.wait(timeout=30)

    def close(self) -> None:
        self.stop()
        with contextlib.suppress(OSError):
            shutil.rmtree(self.directory)
