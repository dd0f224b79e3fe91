"""What a recorder or store URL names: its kind, its path. Pure: no I/O, no recorder built.

`tracks.url.open_recorder` builds recorders from these; stores (`tracks.presence`) and the
stream configuration read URLs with them too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

__all__ = [
    "ACCEPTED_FORMS",
    "RecorderKind",
    "StoreKind",
    "bad_url",
    "can_spool",
    "parse_store_url",
    "recorder_kind",
]

ACCEPTED_FORMS = (
    "sqlite:///abs/path.sqlite",
    "sqlite://relative/path.sqlite",
    "jsonl:///abs/path.jsonl",
    "jsonl://relative/path.jsonl",
    "jsonl:-",
    "postgresql://user@host:port/db[?schema=NAME]",
    "postgres://user@host:port/db[?schema=NAME]",
    "http://host/path",
    "https://host/path",
    "memory:",
    "none",
)

StoreKind = Literal["sqlite", "jsonl"]
RecorderKind = Literal["none", "memory", "http", "sqlite", "jsonl", "postgresql"]


def bad_url(url: str, why: str) -> ValueError:
    return ValueError(
        f"bad recorder URL {url!r}: {why}; accepted forms: {', '.join(ACCEPTED_FORMS)}"
    )


def parse_store_url(url: str) -> tuple[StoreKind, Path | Literal["-"]]:
    """``sqlite:…`` or ``jsonl:…`` to its kind and path (``"-"`` means stdout).

    Raises:
        ValueError: not one of the accepted forms.
    """
    scheme, colon, rest = url.partition(":")
    if not colon or scheme not in ("sqlite", "jsonl"):
        raise bad_url(url, "not a sqlite: or jsonl: URL")
    kind: StoreKind = "sqlite" if scheme == "sqlite" else "jsonl"
    if kind == "jsonl" and rest == "-":
        return kind, "-"
    if not rest.startswith("//") or not rest[2:] or rest[2:] == "/":
        raise bad_url(url, f"{scheme}: needs a path after '//'")
    # sqlite:///abs -> "/abs" (absolute); sqlite://rel -> "rel" (relative to the working directory)
    return kind, Path(rest[2:])


def recorder_kind(url: str) -> RecorderKind:
    """What `open_recorder` builds from ``url``, without building it or touching a file.

    Raises:
        TypeError: ``url`` is not a string.
        ValueError: the URL is not one of the accepted forms (the message lists them).
    """
    if not isinstance(url, str):
        raise TypeError(f"recorder URL must be a string, got {type(url).__name__}")
    url = url.strip()
    if url == "none":
        return "none"
    if url == "memory:":
        return "memory"
    scheme = url.partition(":")[0].lower()
    if scheme in ("http", "https"):
        if not url.lower().startswith(f"{scheme}://") or len(url) <= len(scheme) + 3:
            raise bad_url(url, "needs a host")
        return "http"
    if scheme in ("postgresql", "postgres"):
        if not url[len(scheme) + 1 :].startswith("//"):
            raise bad_url(url, f"{scheme}: needs '//' and a host or database")
        return "postgresql"
    return parse_store_url(url)[0]


def can_spool(url: str) -> bool:
    """Whether the recorder of ``url`` takes a ``spool`` folder: it delivers in the
    background to a file or a backend (SQLite, PostgreSQL, a JSONL file, HTTP), so batches
    can wait on disk through an outage. Memory, ``none`` and ``jsonl:-`` (stdout) have
    nothing to wait for.

    Raises:
        TypeError, ValueError: as `recorder_kind`.
    """
    kind = recorder_kind(url)
    if kind == "jsonl":
        return parse_store_url(url.strip())[1] != "-"
    return kind in ("http", "sqlite", "postgresql")
