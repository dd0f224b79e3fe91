"""The room log's entry codec: round trips, and every malformed entry refused with ValueError."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rtc.cluster.entries import (
    KINDS,
    TARGETED,
    Entry,
    decode_entry,
    decode_flat,
    decode_reply,
    encode_entry,
    encode_reply,
)

node_ids = st.text(min_size=1, max_size=40)
kinds = st.sampled_from(sorted(KINDS))


@st.composite
def entries(draw: st.DrawFn) -> Entry:
    kind = draw(kinds)
    target = draw(node_ids) if kind in TARGETED else draw(st.none() | node_ids)
    return Entry(draw(node_ids), kind, draw(st.binary(max_size=300)), target)


@given(entries())
def test_an_entry_survives_its_fields(entry: Entry) -> None:
    assert decode_entry(encode_entry(entry)) == entry


@given(entries())
def test_an_entry_survives_the_flat_list_redis_replies_with(entry: Entry) -> None:
    flat = [item for pair in encode_entry(entry).items() for item in pair]
    assert decode_flat(flat) == entry


@given(st.lists(st.sampled_from([b"n", b"k", b"d", b"t", b"update", b"reply", b"\xff"])))
def test_any_flat_list_decodes_as_its_fields_or_raises_value_error(flat: list[bytes]) -> None:
    try:
        entry = decode_flat(flat)
    except ValueError:
        return
    assert entry == decode_entry(dict(zip(flat[::2], flat[1::2], strict=True)))


@given(st.binary(max_size=200), st.binary(max_size=200), st.binary(max_size=200))
def test_a_reply_survives_its_encoding(update: bytes, awareness: bytes, vector: bytes) -> None:
    assert decode_reply(encode_reply(update, awareness, vector)) == (update, awareness, vector)


@given(st.dictionaries(st.sampled_from([b"n", b"k", b"d", b"t", b"x"]), st.binary(max_size=20)))
def test_any_fields_decode_or_raise_value_error(fields: dict[bytes, bytes]) -> None:
    try:
        entry = decode_entry(fields)
    except ValueError:
        return
    assert entry.kind in KINDS


@given(st.binary(max_size=100))
def test_any_reply_bytes_decode_or_raise_value_error(data: bytes) -> None:
    try:
        decode_reply(data)
    except ValueError:
        return


def test_fields_are_the_documented_ones() -> None:
    assert encode_entry(Entry("a", "update", b"\x01\x02")) == {
        b"n": b"a",
        b"k": b"update",
        b"d": b"\x01\x02",
    }
    assert encode_entry(Entry("a", "reply", b"", "b"))[b"t"] == b"b"


def test_unknown_fields_are_ignored() -> None:
    fields = {b"n": b"a", b"k": b"kick", b"d": b"7", b"future": b"x"}
    assert decode_entry(fields) == Entry("a", "kick", b"7")


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({b"k": b"update", b"d": b""}, "missing"),
        ({b"n": b"a", b"d": b""}, "missing"),
        ({b"n": b"a", b"k": b"update"}, "missing"),
        ({b"n": b"", b"k": b"update", b"d": b""}, "empty"),
        ({b"n": b"\xff", b"k": b"update", b"d": b""}, "UTF-8"),
        ({b"n": b"a", b"k": b"merge", b"d": b""}, "unknown kind"),
        ({b"n": b"a", b"k": b"update", b"d": b"", b"t": b""}, "empty"),
        ({b"n": b"a", b"k": b"reply", b"d": b""}, "needs a target"),
        ({b"n": b"a", b"k": b"replaced", b"d": b"3"}, "needs a target"),
    ],
)
def test_malformed_entries_are_refused(fields: dict[bytes, bytes], reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        decode_entry(fields)


@pytest.mark.parametrize(
    "data",
    [b"", b"\x01a", b"\x00\x00", b"\x00\x00\x00\x00", b"\x05ab\x00\x00", b"\x80"],
)
def test_malformed_replies_are_refused(data: bytes) -> None:
    with pytest.raises(ValueError, match="malformed reply"):
        decode_reply(data)
