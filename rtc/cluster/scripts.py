"""The cluster's Lua scripts, one per decision, loaded from package data and registered
with a Redis client.

Each script is `rtc/cluster/scripts/<name>.lua` preceded by `common.lua` (key names and the
roster's bookkeeping, shared by all of them). Registered scripts run by ``EVALSHA`` and load
themselves again when Redis has forgotten them (after a restart).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Any

from redis.commands.core import AsyncScript

__all__ = ["NAMES", "Scripts", "register_scripts", "script_source"]

NAMES = ("admit", "alive", "heartbeat", "leave", "reap", "register", "settings")


def _read(name: str) -> str:
    return resources.files("rtc.cluster").joinpath("scripts", f"{name}.lua").read_text("utf-8")


def script_source(name: str) -> str:
    """The full text of one script: the shared helpers, then the script itself."""
    if name not in NAMES:
        raise ValueError(f"no cluster script named {name!r}")
    return f"{_read('common')}\n-- {name}.lua\n{_read(name)}"


@dataclass(frozen=True, slots=True)
class Scripts:
    """The scripts, registered with one client (see `register_scripts`)."""

    admit: AsyncScript
    alive: AsyncScript
    heartbeat: AsyncScript
    leave: AsyncScript
    reap: AsyncScript
    register: AsyncScript
    settings: AsyncScript


def register_scripts(redis: Any) -> Scripts:
    """Register every script with `redis` (a `redis.asyncio.Redis`); nothing is sent yet."""
    return Scripts(**{name: redis.register_script(script_source(name)) for name in NAMES})
