"""Deterministic sampling by session: is this session in a stream's sample? Pure: no I/O here.

A session is in a sample of rate ``r`` when its fraction is below ``r``. The fraction is
FNV-1a 32-bit (http://www.isthe.com/chongo/tech/comp/fnv/) over the UTF-8 bytes of
``f"{blog_id}:{post_id}:{session_id}"``, divided by 2**32. The browser client
(``demo/src/rtc-tracks.js``) computes the same function, bit for bit, so a session is in or
out of a sample on the server and in every browser alike, and a kept session keeps all
of its events.

Key parts: an int is written in decimal, a str as it is, a missing part (``None``) as the
empty string, a bool as ``true``/``false`` and an integral float as an int (as JavaScript
writes them). FNV-1a is not a cryptographic hash: a client can pick a session id that falls
in the sample, which is fine for sampling and wrong for anything that must resist a peer.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

__all__ = [
    "FNV_OFFSET_BASIS",
    "FNV_PRIME",
    "fnv1a_32",
    "props_in_sample",
    "session_fraction",
    "session_in_sample",
]

FNV_OFFSET_BASIS = 0x811C9DC5
FNV_PRIME = 0x01000193
_MASK = 0xFFFFFFFF


def fnv1a_32(data: bytes) -> int:
    """The 32-bit FNV-1a hash of ``data``."""
    value = FNV_OFFSET_BASIS
    for byte in data:
        value = ((value ^ byte) * FNV_PRIME) & _MASK
    return value


def _part(value: object) -> str:
    # Written as JavaScript's `${value}` would write it, so both sides hash the same text.
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | str):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return json.dumps(value, separators=(",", ":"))


def session_fraction(blog_id: object, post_id: object, session_id: object) -> float:
    """Where a session falls in [0, 1): FNV-1a 32-bit of ``blog_id:post_id:session_id`` / 2**32.

    Args:
        blog_id: the blog id (usually an int; ``None`` when unknown).
        post_id: the post id.
        session_id: the session id (the Yjs clientID, an int; a str works too).
    """
    key = f"{_part(blog_id)}:{_part(post_id)}:{_part(session_id)}"
    return fnv1a_32(key.encode()) / 2**32


def session_in_sample(blog_id: object, post_id: object, session_id: object, rate: float) -> bool:
    """Whether a session is in a sample of ``rate`` (1 keeps every session, 0 none).

    Raises:
        ValueError: ``rate`` is not within [0, 1].
    """
    if not 0 <= rate <= 1:  # also refuses NaN
        raise ValueError(f"sample rate must be within [0, 1], got {rate!r}")
    return session_fraction(blog_id, post_id, session_id) < rate


def props_in_sample(props: Mapping[str, object], rate: float) -> bool:
    """Whether the session an event's props name (``blog_id``, ``post_id``, ``session_id``)
    is in a sample of ``rate``: the one sampling rule of recorders, streams and capture.

    Raises:
        ValueError: ``rate`` is not within [0, 1].
    """
    if rate >= 1:
        return True
    return session_in_sample(
        props.get("blog_id"), props.get("post_id"), props.get("session_id"), rate
    )
