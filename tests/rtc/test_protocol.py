"""The y-websocket codec, on bytes alone."""

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rtc.awareness import AwarenessEntry, encode_awareness, first_client
from rtc.errors import ProtocolError, UnsupportedDataError
from rtc.protocol import (
    AuthMessage,
    AwarenessMessage,
    QueryAwareness,
    SyncStep1,
    SyncStep2,
    SyncUpdate,
    awareness_header,
    awareness_sender,
    decode,
    encode,
    write_var_uint,
)

messages = st.one_of(
    st.binary(max_size=300).map(SyncStep1),
    st.binary(max_size=300).map(SyncStep2),
    st.binary(max_size=300).map(SyncUpdate),
    st.binary(max_size=300).map(AwarenessMessage),
    st.builds(AuthMessage, st.integers(0, 2**32), st.text(max_size=40)),
    st.just(QueryAwareness()),
)


@given(messages)
def test_decode_inverts_encode(message: object) -> None:
    assert decode(encode(message)) == message  # type: ignore[arg-type]


@given(st.binary(max_size=200))
def test_any_bytes_decode_or_raise_protocol_error(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        decode(data)


def test_known_frames_from_y_websocket() -> None:
    # sync step 1 with an empty state vector, as a fresh y-websocket client sends it
    assert decode(b"\x00\x00\x01\x00") == SyncStep1(b"\x00")
    assert decode(b"\x00\x02\x02\x00\x00") == SyncUpdate(b"\x00\x00")
    assert decode(b"\x03") == QueryAwareness()


@pytest.mark.parametrize(
    ("data", "detail"),
    [
        (b"", "truncated varuint"),
        (b"\x80", "truncated varuint"),
        (b"\xff" * 12, "out of range"),
        (b"\x07", "unknown message type 7"),
        (b"\x00\x05\x00", "unknown sync message type 5"),
        (b"\x00\x02\xff\xff\x03abc", "exceeds the message"),
        (b"\x01\x02\x00", "exceeds the message"),
        (b"\x03\x00", "trailing"),
        (b"\x02\x00\x02\xff\xfe", "UTF-8"),
    ],
)
def test_malformed_frames_name_the_problem(data: bytes, detail: str) -> None:
    with pytest.raises(ProtocolError, match=detail) as raised:
        decode(data)
    assert raised.value.close_code == 1002
    assert raised.value.error_code == "protocol-error"


def test_text_frames_close_with_1003() -> None:
    assert UnsupportedDataError().close_code == 1003


def test_var_uint_encoding_matches_lib0() -> None:
    assert write_var_uint(0) == b"\x00"
    assert write_var_uint(127) == b"\x7f"
    assert write_var_uint(128) == b"\x80\x01"
    assert write_var_uint(300) == b"\xac\x02"
    with pytest.raises(ValueError, match="out of range"):
        write_var_uint(-1)


def _awareness(*client_ids: int) -> bytes:
    entries = [AwarenessEntry(client, 3, '{"cursor":null}') for client in client_ids]
    return encode(AwarenessMessage(encode_awareness(entries)))


@given(
    st.one_of(
        st.binary(max_size=40),
        st.lists(st.integers(0, 2**53 - 1), max_size=3).map(lambda ids: _awareness(*ids)),
        st.integers(0, 2**32).map(lambda client: _awareness(client)[:-1]),
    )
)
def test_awareness_sender_agrees_with_the_full_decode(data: bytes) -> None:
    """Whenever the header peek names a sender, the full decode names the same one."""
    sender = awareness_sender(data)
    if sender is None:
        return
    message = decode(data)
    assert isinstance(message, AwarenessMessage)
    assert first_client(message.payload) == (1, sender)


@given(
    st.one_of(
        st.binary(max_size=40),
        st.binary(max_size=12).map(lambda tail: b"\x01" + tail),
        st.lists(st.integers(0, 2**53 - 1), max_size=3).map(lambda ids: _awareness(*ids)),
        st.integers(0, 2**32).map(lambda client: _awareness(client)[:-1]),
    )
)
def test_awareness_header_agrees_with_the_full_decode(data: bytes) -> None:
    """One read of the header: the count the full decode finds, the sender it names."""
    header = awareness_header(data)
    try:
        message = decode(data)
    except ProtocolError:
        message = None
    if header is None:
        assert not isinstance(message, AwarenessMessage)
        return
    count, sender = header
    assert sender == awareness_sender(data)
    if isinstance(message, AwarenessMessage):
        try:
            assert first_client(message.payload)[0] == count
        except ProtocolError:
            assert count == 1  # a header that breaks off counts as one entry
        if sender is not None:
            assert first_client(message.payload) == (1, sender)


def test_awareness_sender_reads_one_entry_updates_only() -> None:
    assert awareness_sender(_awareness(3_000_000_000)) == 3_000_000_000
    assert awareness_sender(_awareness(1, 2)) is None
    assert awareness_sender(_awareness()) is None
    assert awareness_sender(encode(SyncUpdate(b"\x00\x00"))) is None
    assert awareness_sender(_awareness(7)[:-1]) is None  # the declared length does not add up
