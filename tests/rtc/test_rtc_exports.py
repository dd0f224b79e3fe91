"""The public API of `rtc` is what we mean: each name exported from where it is defined."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

import rtc

# Name -> the module that defines it.
PUBLIC = {
    "CloseCode": "rtc.errors",
    "ConfigError": "rtc.config",
    "ProtocolError": "rtc.errors",
    "RoomKey": "rtc.ids",
    "RoomLimits": "rtc.limits",
    "RtcError": "rtc.errors",
    "RtcServer": "rtc.app",
    "ServerConfig": "rtc.config",
}


def test_all_is_what_we_mean() -> None:
    assert sorted(rtc.__all__) == sorted(PUBLIC)
    namespace: dict[str, object] = {}
    exec("from rtc import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(PUBLIC)


@pytest.mark.parametrize(("name", "module"), sorted(PUBLIC.items()))
def test_each_name_is_the_object_its_module_defines(name: str, module: str) -> None:
    exported = getattr(rtc, name)
    assert exported is getattr(importlib.import_module(module), name)
    assert exported.__module__ == module


def test_package_is_typed() -> None:
    assert (Path(rtc.__file__).parent / "py.typed").is_file()


def test_one_node_imports_no_redis_client() -> None:
    """Without --cluster nothing needs Redis: the server's modules load no redis-py (the
    `cluster` extra may be missing)."""
    import subprocess
    import sys

    code = (
        "import sys, rtc.app, rtc.server, rtc.__main__\n"
        "sys.exit(any(m == 'redis' or m.startswith('redis.') for m in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
