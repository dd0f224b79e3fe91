"""Room decisions, on messages alone: no sockets, no event loop."""

from __future__ import annotations

import json

import pytest
from pycrdt import Doc, Text

from rtc.actions import (
    ECHO,
    Action,
    Blocked,
    Broadcast,
    CheckLiveness,
    Close,
    Identity,
    Joined,
    Left,
    Note,
    Persist,
    Send,
)
from rtc.awareness import AwarenessEntry, decode_awareness, encode_awareness
from rtc.errors import ProtocolError
from rtc.history import SessionHistory
from rtc.ids import RoomKey
from rtc.limits import RoomLimits
from rtc.protocol import AwarenessMessage, SyncStep1, SyncStep2, SyncUpdate, decode, encode
from rtc.room import Room

KEY = RoomKey(7, 42)


def make_room(**limits: int) -> Room:
    return Room(KEY, Doc(), limits=RoomLimits(**limits), history=SessionHistory())


def presence(client_id: int, clock: int = 0, user: int | None = None, name: str = "Ada") -> bytes:
    state = {"collaboratorInfo": {"id": user, "name": name}} if user is not None else {"x": 1}
    entry = AwarenessEntry(client_id, clock, json.dumps(state))
    return encode_awareness([entry])


def removal(client_id: int, clock: int) -> bytes:
    return encode_awareness([AwarenessEntry(client_id, clock, "null")])


def admit(
    room: Room, connection: int, client_id: int, user: int | None, now: int = 1000
) -> list[Action]:
    room.open(connection, now)
    return room.receive(connection, AwarenessMessage(presence(client_id, user=user)), now)


def of(kind: type, actions: list[Action]) -> list:
    return [action for action in actions if isinstance(action, kind)]


def an_update(text: str) -> bytes:
    doc = Doc()
    doc["content"] = content = Text()
    content += text
    return doc.get_update()


def test_nothing_is_sent_before_the_session_is_named() -> None:
    room = make_room()
    room.open(1, 0)
    assert room.receive(1, SyncStep1(b"\x00"), 0) == []
    assert room.session_of(1) is None


def test_admission_sends_state_vector_then_presence_and_replays_held_messages() -> None:
    room = make_room()
    room.open(1, 0)
    room.receive(1, SyncStep1(b"\x00"), 0)
    actions = room.receive(1, AwarenessMessage(presence(111, user=5)), 10)
    sends = of(Send, actions)
    assert isinstance(decode(sends[0].data), SyncStep1)
    entries = decode_awareness(decode(sends[1].data).payload)  # type: ignore[union-attr]
    assert [entry.client_id for entry in entries] == [111]
    [joined] = of(Joined, actions)
    assert (joined.session.session_id, joined.session.user_id) == (111, 5)
    assert joined.contributors == (5,)
    assert joined.session_count == 1
    [held] = room.take_held(1)
    [reply] = room.receive(1, held, 10)
    assert isinstance(decode(reply.data), SyncStep2)  # type: ignore[union-attr]


def test_updates_reach_everyone_but_their_sender_and_are_persisted() -> None:
    room = make_room()
    admit(room, 1, 111, 5)
    admit(room, 2, 222, 6)
    update = an_update("hello")
    actions = room.receive(1, SyncUpdate(update), 20)
    assert of(Persist, actions) == [Persist(update)]
    [broadcast] = of(Broadcast, actions)
    assert broadcast.to == (2,)
    assert str(room.doc.get("content", type=Text)) == "hello"
    assert room.session_of(1).updates == 1  # type: ignore[union-attr]


def test_invalid_update_is_refused_and_the_document_is_untouched() -> None:
    room = make_room()
    admit(room, 1, 111, 5)
    room.receive(1, SyncUpdate(an_update("kept")), 0)
    before = room.doc.get_update()
    with pytest.raises(ProtocolError, match="invalid document update"):
        room.receive(1, SyncUpdate(b"\x05\xff\xff"), 0)
    assert room.doc.get_update() == before


def test_awareness_new_by_clock_goes_to_all_and_echoes_are_dropped() -> None:
    room = make_room()
    admit(room, 1, 111, 5)
    admit(room, 2, 222, 6)
    [change] = of(Broadcast, room.receive(1, AwarenessMessage(presence(111, clock=1, user=5)), 0))
    assert change.to == (1, 2)
    # connection 2 re-sends what it applied (y-websocket does): old by clock, nothing goes out
    assert of(Broadcast, room.receive(2, AwarenessMessage(presence(111, clock=1, user=5)), 0)) == []


def test_a_connection_cannot_touch_presence_it_does_not_control() -> None:
    room = make_room()
    admit(room, 1, 111, 5)
    admit(room, 2, 222, 6)
    assert of(Broadcast, room.receive(2, AwarenessMessage(removal(111, clock=9)), 0)) == []
    assert room.session_of(1) is not None
    query = room.receive(2, decode(b"\x03"), 0)
    entries = decode_awareness(decode(query[0].data).payload)  # type: ignore[union-attr]
    assert sorted(entry.client_id for entry in entries) == [111, 222]


def test_a_third_user_is_blocked_but_a_second_tab_is_admitted() -> None:
    room = make_room(max_contributors=2)
    admit(room, 1, 111, 5)
    admit(room, 2, 222, 6)
    assert of(Joined, admit(room, 3, 333, 5))  # user 5's second tab
    actions = admit(room, 4, 444, 7)
    [blocked] = of(Blocked, actions)
    assert (blocked.session_id, blocked.user_id, blocked.limit, blocked.limit_kind) == (
        444, 7, 2, "contributors")
    assert blocked.contributors == (5, 6)
    assert blocked.session_count == 3
    assert blocked.first
    assert of(Close, actions) == [Close(4, 4429, "connection-limit-exceeded")]
    assert not of(Send, actions)  # neither the document nor anyone's presence
    # the same session retrying is refused again, but it is not a new "first" refusal
    [again] = of(Blocked, admit(room, 5, 444, 7))
    assert not again.first


def test_a_dead_tab_does_not_keep_a_room_full() -> None:
    room = make_room(max_contributors=1)
    admit(room, 1, 111, 5)
    room.close(1, 2000, clean=False)
    assert of(Joined, admit(room, 2, 222, 6))


def test_connection_cap_counts_sessions() -> None:
    room = make_room(max_connections=2)
    admit(room, 1, 111, 5)
    admit(room, 2, 222, 5)
    [blocked] = of(Blocked, admit(room, 3, 333, 5))
    assert (blocked.limit, blocked.limit_kind) == (2, "connections")


def test_closing_removes_presence_at_once_and_reports_the_session() -> None:
    room = make_room()
    admit(room, 1, 111, 5, now=1000)
    admit(room, 2, 222, 6)
    room.receive(1, SyncUpdate(an_update("x")), 1500)
    actions = room.close(1, 4000, clean=False)
    [gone] = of(Broadcast, actions)
    assert gone.to == (2,)
    [entry] = decode_awareness(decode(gone.data).payload)  # type: ignore[union-attr]
    assert (entry.client_id, entry.state()) == (111, None)
    [left] = of(Left, actions)
    assert (left.ended_at_ms - left.session.joined_at_ms, left.clean, left.session.updates) == (
        3000, False, 1)


def test_the_same_session_coming_back_knows_its_previous_end() -> None:
    room = make_room()
    admit(room, 1, 111, 5, now=1000)
    room.close(1, 2000, clean=False)
    [joined] = of(Joined, admit(room, 2, 111, 5, now=2500))
    assert joined.previous_end is not None
    assert (joined.previous_end.ended_at_ms, joined.previous_end.abnormal) == (2000, True)


def test_a_claim_on_a_live_session_waits_for_a_liveness_check() -> None:
    room = make_room()
    admit(room, 1, 111, 5)
    # the claimant is neither admitted nor refused: the driver pings the holder first
    assert admit(room, 2, 111, 5) == [CheckLiveness(holder=1, claimant=2)]
    assert room.receive(2, SyncStep1(b"\x00"), 0) == []  # held meanwhile
    # a live holder keeps its session
    assert room.liveness_checked(2, 1, 0, alive=True) == [
        Note("session-conflict"), Close(2, 4409, "session-conflict")]
    assert room.session_of(1) is not None
    assert room.connection_count == 1


def test_a_dead_holder_is_replaced_and_strangers_are_refused_unchecked() -> None:
    room = make_room()
    admit(room, 1, 111, 5)
    admit(room, 2, 111, 5)
    actions = room.liveness_checked(2, 1, 0, alive=False)
    assert Close(1, 4409, "session-replaced") in actions
    assert of(Left, actions)[0].session.connection == 1
    assert room.session_of(2) is not None
    assert room.session_count == 1
    assert of(Close, admit(room, 3, 111, 9)) == [Close(3, 4409, "session-conflict")]
    assert room.liveness_checked(3, 2, 0, alive=False) == []  # no claim pending: nothing


def test_a_claimant_that_leaves_before_the_check_ends_changes_nothing() -> None:
    room = make_room()
    admit(room, 1, 111, 5)
    admit(room, 2, 111, 5)
    room.close(2, 0, clean=True)
    assert room.liveness_checked(2, 1, 0, alive=False) == []
    assert room.session_of(1) is not None


def test_too_much_held_before_announcing_is_a_protocol_error() -> None:
    room = make_room(max_held_messages=2)
    room.open(1, 0)
    room.receive(1, SyncStep1(b"\x00"), 0)
    room.receive(1, SyncStep1(b"\x00"), 0)
    with pytest.raises(ProtocolError):
        room.receive(1, SyncStep1(b"\x00"), 0)


def test_roster_groups_sessions_by_user() -> None:
    room = make_room()
    admit(room, 1, 111, 5, now=1)
    admit(room, 2, 222, 6, now=2)
    admit(room, 3, 333, 5, now=3)
    roster = room.roster()
    assert [(c.user_id, [s.session_id for s in c.sessions]) for c in roster] == [
        (5, [111, 333]), (6, [222])]


def test_invalid_awareness_json_of_its_own_session_is_a_protocol_error() -> None:
    room = make_room()
    admit(room, 1, 111, 5)
    bad = encode_awareness([AwarenessEntry(111, 5, "{not json")])
    with pytest.raises(ProtocolError, match="not JSON"):
        room.receive(1, AwarenessMessage(bad), 0)


def test_an_anonymous_session_counts_as_one_contributor() -> None:
    """README: a session without collaboratorInfo.id counts against max_contributors alone."""
    room = make_room(max_contributors=2)
    assert of(Joined, admit(room, 1, 111, None))
    assert of(Joined, admit(room, 2, 222, 5))
    [blocked] = of(Blocked, admit(room, 3, 333, None))  # another anonymous tab is another one
    assert (blocked.user_id, blocked.limit, blocked.limit_kind) == (None, 2, "contributors")
    assert blocked.contributors == (5,)  # user ids only; the anonymous one is in the count
    assert of(Blocked, admit(room, 4, 444, 6))
    assert of(Joined, admit(room, 5, 555, 5))  # user 5's second tab is no new contributor
    room.close(1, 2000, clean=True)
    assert of(Joined, admit(room, 6, 666, None))  # the anonymous seat is free again


def test_an_anonymous_reconnect_keeps_its_seat() -> None:
    room = make_room(max_contributors=1)
    admit(room, 1, 111, None)
    assert admit(room, 2, 111, None) == [CheckLiveness(1, 2)]  # the same Y.Doc, new socket
    actions = room.liveness_checked(2, 1, 0, alive=False)
    assert Close(1, 4409, "session-replaced") in actions
    assert of(Joined, actions)


@pytest.mark.parametrize(("sizes", "refused"), [((6, 4), False), ((6, 5), True)])
def test_bytes_held_before_announcing_are_bounded(sizes: tuple[int, ...], refused: bool) -> None:
    room = make_room(max_held_bytes=10)
    room.open(1, 0)
    *first, last = [SyncStep1(b"\x00" * size) for size in sizes]
    for message in first:
        assert room.receive(1, message, 0) == []
    if refused:
        with pytest.raises(ProtocolError, match="too much sent"):
            room.receive(1, last, 0)
    else:
        assert room.receive(1, last, 0) == []
        assert of(Joined, room.receive(1, AwarenessMessage(presence(111, user=5)), 0))
        assert room.take_held(1) == [*first, last]


def test_the_token_names_the_user_and_a_different_awareness_user_is_noted() -> None:
    room = make_room()
    room.open(1, 0, identity=Identity(5, "Ada (token)"))
    actions = room.receive(1, AwarenessMessage(presence(111, user=6, name="Eve")), 0)
    assert Note("awareness-user-mismatch") in actions
    [joined] = of(Joined, actions)
    assert (joined.session.user_id, joined.session.name) == (5, "Ada (token)")
    assert joined.contributors == (5,)


@pytest.mark.parametrize("announced", [5, None])
def test_an_awareness_user_that_agrees_with_the_token_or_is_absent_is_no_mismatch(
    announced: int | None,
) -> None:
    room = make_room()
    room.open(1, 0, identity=Identity(5))
    actions = room.receive(1, AwarenessMessage(presence(111, user=announced, name="Ada")), 0)
    assert not of(Note, actions)
    [joined] = of(Joined, actions)
    assert joined.session.user_id == 5
    assert joined.session.name == ("Ada" if announced is not None else None)


def echo_room() -> Room:
    room = make_room()
    admit(room, 1, 111, 5)
    admit(room, 2, 222, 6)
    room.open(3, 0)  # not admitted yet
    return room


@pytest.mark.parametrize(
    ("connection", "payload", "echo"),
    [
        (2, presence(111, clock=1, user=5), True),  # one state of another session
        (2, presence(999, clock=1, user=9), True),  # unknown ids are not its own either
        (2, presence(222, clock=1, user=6), False),  # its own
        # two entries are decoded: its own change goes out, the foreign one is ignored
        (2, encode_awareness([AwarenessEntry(111, 1, "null"), AwarenessEntry(222, 1, "{}")]),
         False),
        (3, presence(111, clock=1, user=5), False),  # not admitted: it may be announcing
    ],
)
def test_is_echo_recognises_one_foreign_state_from_the_header(
    connection: int, payload: bytes, echo: bool
) -> None:
    room = echo_room()
    data = encode(AwarenessMessage(payload))
    assert room.is_echo(connection, data) is echo
    if connection == 2:  # the full path through receive comes to the same answer
        assert (room.receive(2, AwarenessMessage(payload), 0) == [ECHO]) is echo


def test_is_echo_is_false_for_anything_but_awareness() -> None:
    room = echo_room()
    for data in (encode(SyncStep1(b"\x00")), encode(SyncUpdate(an_update("x"))), b"\x01", b""):
        assert not room.is_echo(2, data)
