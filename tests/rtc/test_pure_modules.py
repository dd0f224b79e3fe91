"""The wire and the room stay pure: no I/O, no event loop, not even through another module.

Read from the source (absolute and relative imports, wherever they are written): a pure
module may import only other pure modules of `rtc` and libraries that do no I/O.
"""

from __future__ import annotations

import pytest

from tests.module_imports import imports_of, modules_of

PURE = {
    "rtc.actions",
    "rtc.cluster.keys",
    "rtc.cluster.outcomes",
    "rtc.decisions",
    "rtc.cluster.positions",
    "rtc.cluster.remote",
    "rtc.cluster.entries",
    "rtc.analytics.feed",
    "rtc.awareness",
    "rtc.budget",
    "rtc.content",
    "rtc.closes",
    "rtc.errors",
    "rtc.forwarded",
    "rtc.history",
    "rtc.http.errors",
    "rtc.http.request",
    "rtc.http.roster",
    "rtc.http.routes",
    "rtc.ids",
    "rtc.integrations.roster",
    "rtc.limits",
    "rtc.newcomers",
    "rtc.presence",
    "rtc.protocol",
    "rtc.ratelimit",
    "rtc.admission",
    "rtc.replica",
    "rtc.room",
    "rtc.yupdate",
}
IO = {"websockets", "anyio", "asyncio", "socket", "sqlite3", "sqlite_anyio", "httpx", "tracks"}


@pytest.mark.parametrize("module", sorted(PURE))
def test_module_does_no_io(module: str) -> None:
    imported = imports_of(module)
    assert not {name for name in imported if name.split(".")[0] in IO}
    # `rtc` itself (its __init__ starts the server) or any module outside the pure set.
    impure = {name for name in imported if name.split(".")[0] == "rtc" and name not in PURE}
    assert not impure, f"{module} imports {sorted(impure)}, which are not pure"


def test_the_pure_modules_exist() -> None:
    assert set(modules_of("rtc")) >= PURE


@pytest.mark.parametrize(
    ("source", "module", "resolved"),
    [
        ("from .documents import Documents", "rtc.room", "rtc.documents"),
        ("from . import documents", "rtc.room", "rtc.documents"),
        ("from ..server import RtcServer", "rtc.http.routes", "rtc.server"),
        ("from .routes import Route", "rtc.http", "rtc.http.routes"),
        ("def later():\n    import anyio", "rtc.room", "anyio"),
    ],
)
def test_relative_and_lazy_imports_are_seen(source: str, module: str, resolved: str) -> None:
    """The checker itself: it would catch `from .documents import ...` in room.py."""
    assert resolved in imports_of(module, source)
