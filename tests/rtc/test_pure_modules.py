"""The wire and the room stay pure: they import neither websockets nor anyio."""

import ast
from pathlib import Path

import pytest

PURE = [
    "protocol.py", "awareness.py", "room.py", "history.py", "routes.py", "feed.py", "closes.py",
    "yupdate.py", "ratelimit.py",
]
ROOT = Path(__file__).resolve().parents[2] / "rtc"


@pytest.mark.parametrize("module", PURE)
def test_module_does_no_io(module: str) -> None:
    tree = ast.parse((ROOT / module).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert not imported & {"websockets", "anyio", "asyncio", "socket", "sqlite3", "tracks"}
