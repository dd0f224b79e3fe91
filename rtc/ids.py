"""What counts as an id: blog, post and user ids, from a URL, a token or a JSON value;
and `RoomKey`, the id of a room (one post of one blog).

No I/O here. Ids are positive integers below 2**63, so that every id fits a signed 64-bit
column (SQLite INTEGER, PostgreSQL bigint) wherever it is stored.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MAX_ID", "RoomKey", "id_from_json", "id_from_text"]

MAX_ID = 2**63 - 1
_MAX_DIGITS = len(str(MAX_ID))


def id_from_text(text: str) -> int | None:
    """The id that `text` spells in decimal ASCII digits, or None.

    Leading zeros, signs, spaces, non-ASCII digits and values past `MAX_ID` are not ids.
    """
    if not (0 < len(text) <= _MAX_DIGITS and text.isascii() and text.isdigit()):
        return None
    if text[0] == "0":
        return None
    value = int(text)
    return value if value <= MAX_ID else None


def id_from_json(value: object, *, digits: bool = False) -> int | None:
    """The id a decoded JSON value holds, or None.

    Args:
        value: an int (never a bool), or with ``digits`` a string of digits too (JWT claims
            and some clients send ids as strings).
        digits: accept a string of decimal digits.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 < value <= MAX_ID else None
    if digits and isinstance(value, str):
        return id_from_text(value)
    return None


@dataclass(frozen=True, slots=True, order=True)
class RoomKey:
    """A room is one post of one blog."""

    blog_id: int
    post_id: int

    def __post_init__(self) -> None:
        if not (0 < self.blog_id <= MAX_ID and 0 < self.post_id <= MAX_ID):
            raise ValueError("blog_id and post_id must be positive integers below 2**63")

    def __str__(self) -> str:
        return f"{self.blog_id}/{self.post_id}"
