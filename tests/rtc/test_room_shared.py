"""A room in cluster mode (`Room(shared=True)`), on messages alone: the cluster's roster
decides admission (`Reserve` / `reserved`), what local clients change is `Share`d, and what
other nodes share comes in through `remote_*`. No sockets, no event loop, no Redis.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from pycrdt import Doc, Text

from rtc.actions import (
    Action,
    Blocked,
    Broadcast,
    Close,
    Joined,
    Left,
    Note,
    Persist,
    Reserve,
    Send,
    Share,
)
from rtc.awareness import AwarenessEntry, decode_awareness, encode_awareness
from rtc.decisions import Admission, Conflict, Decision, Refusal
from rtc.errors import ProtocolError
from rtc.history import RecentEnd, SessionHistory
from rtc.ids import RoomKey
from rtc.limits import RoomLimits
from rtc.protocol import (
    AwarenessMessage,
    Message,
    SyncStep1,
    SyncStep2,
    SyncUpdate,
    decode,
    encode,
)
from rtc.room import Room

KEY = RoomKey(7, 42)
ADMITTED = Admission(contributors=(5, 9), session_count=3)


def make_room(*, shared: bool = True, **limits: int) -> Room:
    return Room(KEY, Doc(), limits=RoomLimits(**limits), history=SessionHistory(), shared=shared)


def entry(client_id: int, clock: int = 0, user: int | None = None) -> AwarenessEntry:
    state = {"collaboratorInfo": {"id": user, "name": "Ada"}} if user is not None else {"x": 1}
    return AwarenessEntry(client_id, clock, json.dumps(state))


def presence(client_id: int, clock: int = 0, user: int | None = None) -> bytes:
    return encode_awareness([entry(client_id, clock, user)])


def removal(client_id: int, clock: int) -> bytes:
    return encode_awareness([AwarenessEntry(client_id, clock, "null")])


def announce(
    room: Room, connection: int, client_id: int, user: int | None, now: int = 1000
) -> list[Action]:
    room.open(connection, now)
    return room.receive(connection, AwarenessMessage(presence(client_id, user=user)), now)


def admit(
    room: Room, connection: int, client_id: int, user: int | None, now: int = 1000
) -> list[Action]:
    """Announce, then the cluster admits (on one node: admitted at once)."""
    actions = announce(room, connection, client_id, user, now)
    if room.shared:
        return actions + room.reserved(connection, ADMITTED, now)
    return actions


def of(kind: type, actions: list[Action]) -> list[Any]:
    return [action for action in actions if isinstance(action, kind)]


def shared_entries(actions: list[Action]) -> list[tuple[str, tuple[AwarenessEntry, ...] | bytes]]:
    """The `Share`s, awareness payloads decoded."""
    return [
        (s.kind, decode_awareness(s.data) if s.kind == "awareness" else s.data)
        for s in of(Share, actions)
    ]


def sent_entries(data: bytes) -> tuple[AwarenessEntry, ...]:
    message = decode(data)
    assert isinstance(message, AwarenessMessage)
    return decode_awareness(message.payload)


def an_update(text: str) -> bytes:
    doc: Doc[Text] = Doc()
    doc["content"] = content = Text()
    content += text
    return doc.get_update()


def text_of(room: Room) -> str:
    return str(room.doc.get("content", type=Text))


# --- admission by the cluster -------------------------------------------------------


def test_an_announce_asks_the_cluster_and_nothing_is_sent_meanwhile() -> None:
    room = make_room(max_contributors=1)  # the room's own limits are not applied
    admit(room, 1, 111, 5)
    room.open(2, 500)
    actions = room.receive(2, AwarenessMessage(presence(222, user=6)), 1000)
    assert actions == [Reserve(2, 222, 6, "Ada", 500, 1000)]
    assert room.session_of(2) is None
    assert room.connection_count == 2


def test_an_admission_finishes_the_handshake_with_the_clusters_figures() -> None:
    room = make_room()
    admit(room, 1, 111, 5)
    announce(room, 2, 222, 6)
    previous = RecentEnd(900, abnormal=True)
    decision = Admission(contributors=(5, 6, 8), session_count=4, previous_end=previous)
    actions = room.reserved(2, decision, 1000)
    sync, present = of(Send, actions)
    assert sync.connection == 2
    assert isinstance(decode(sync.data), SyncStep1)
    assert [e.client_id for e in sent_entries(present.data)] == [111, 222]
    [announced] = of(Broadcast, actions)
    assert announced.to == (1,)
    assert shared_entries(actions) == [("awareness", sent_entries(announced.data))]
    [joined] = of(Joined, actions)
    assert (joined.contributors, joined.session_count, joined.previous_end) == (
        (5, 6, 8), 4, previous
    )
    # The room's own figures stay this node's.
    assert room.contributor_ids() == (5, 6)
    assert room.session_count == 2


@pytest.mark.parametrize(
    ("decision", "expected"),
    [
        (
            Refusal(2, "contributors", (5, 9), 2, first=False),
            [
                Blocked(KEY, 2, 222, 6, (5, 9), 2, 2, "contributors", False),
                Close(2, 4429, "connection-limit-exceeded"),
            ],
        ),
        (Conflict(), [Note("session-conflict"), Close(2, 4409, "session-conflict")]),
        (None, [Close(2, 4503, "cluster-unavailable")]),
    ],
    ids=["refusal", "conflict", "unavailable"],
)
def test_a_newcomer_the_cluster_does_not_admit_is_closed(
    decision: Decision | None, expected: list[Action]
) -> None:
    room = make_room()
    announce(room, 2, 222, 6)
    assert room.reserved(2, decision, 1000) == expected
    assert room.session_of(2) is None
    assert room.is_empty


@pytest.mark.parametrize("decision", [ADMITTED, Conflict(), None], ids=["admitted", "c", "u"])
def test_a_decision_for_a_newcomer_that_left_meanwhile_returns_nothing(
    decision: Decision | None,
) -> None:
    """No action is how the driver learns that it must release an admission itself."""
    room = make_room()
    announce(room, 2, 222, 6)
    assert room.close(2, 1000, clean=True) == []
    assert room.reserved(2, decision, 1000) == []
    assert room.reserved(3, decision, 1000) == []  # never opened
    assert room.is_empty


def test_what_a_newcomer_sends_before_and_while_the_cluster_decides_is_replayed() -> None:
    room = make_room()
    room.open(2, 0)
    room.receive(2, SyncStep1(b"\x00"), 0)
    room.receive(2, AwarenessMessage(presence(222, user=6)), 0)
    later: list[Message] = [
        SyncUpdate(an_update("held")),
        AwarenessMessage(presence(222, clock=1, user=6)),
    ]
    for message in later:
        assert room.receive(2, message, 0) == []  # held: a second announce asks nothing
    assert room.take_held(2) == []
    room.reserved(2, ADMITTED, 10)
    held = room.take_held(2)
    assert held == [SyncStep1(b"\x00"), *later]
    [reply] = room.receive(2, held[0], 10)
    assert isinstance(decode(reply.data), SyncStep2)  # type: ignore[union-attr]


def test_a_reconnect_is_told_it_is_gone_at_the_clusters_removal_clock() -> None:
    room = make_room()
    announce(room, 2, 222, 6)
    decision = Admission((6,), 1, previous_end=RecentEnd(900, abnormal=False, awareness_clock=3))
    actions = room.reserved(2, decision, 1000)
    tombstone = sent_entries(of(Send, actions)[-1].data)
    assert tombstone == (AwarenessEntry(222, 3, "null"),)


def test_a_session_still_held_here_is_checked_for_liveness_before_the_cluster_is_asked() -> None:
    room = make_room()
    admit(room, 1, 111, 5)
    room.open(2, 0)
    [_check] = room.receive(2, AwarenessMessage(presence(111, clock=1, user=5)), 0)
    actions = room.liveness_checked(2, 1, 10, alive=False)
    assert [a for a in actions if isinstance(a, Close)] == [Close(1, 4409, "session-replaced")]
    assert of(Reserve, actions) == [Reserve(2, 111, 5, "Ada", 0, 10)]
    # The dead holder's presence removal is shared; the newcomer outbids it once admitted.
    assert shared_entries(actions) == [("awareness", (AwarenessEntry(111, 1, "null"),))]
    admitted = room.reserved(2, ADMITTED, 20)
    assert sent_entries(of(Send, admitted)[-1].data) == (AwarenessEntry(111, 1, "null"),)


def test_a_session_taken_here_while_the_cluster_decided_goes_to_the_later_claim() -> None:
    room = make_room()
    announce(room, 1, 111, 5)
    announce(room, 2, 111, 5)  # the same Y.Doc through a second socket, before either is in
    room.reserved(1, ADMITTED, 10)
    actions = room.reserved(2, ADMITTED, 20)
    assert Close(1, 4409, "session-replaced") in actions
    assert [left.session.connection for left in of(Left, actions)] == [1]
    assert [s.connection for s in room.sessions()] == [2]


# --- what this node shares ------------------------------------------------------------


def scenario(room: Room) -> list[Action]:
    """Two sessions: an update, an awareness change, an echo, a close."""
    actions = admit(room, 1, 111, 5) + admit(room, 2, 222, 6)
    actions += room.receive(1, SyncUpdate(an_update("hi")), 20)
    actions += room.receive(1, AwarenessMessage(presence(111, clock=1, user=5)), 20)
    actions += room.receive(2, AwarenessMessage(presence(111, clock=1, user=5)), 20)  # echo
    return actions + room.close(1, 30, clean=True)


def test_each_local_change_is_shared_once_in_order() -> None:
    room = make_room()
    actions = scenario(room)
    persisted = of(Persist, actions)
    assert shared_entries(actions) == [
        ("awareness", (entry(111, 0, 5),)),  # announces
        ("awareness", (entry(222, 0, 6),)),
        ("update", persisted[0].update),  # what was persisted, right after it
        ("awareness", (entry(111, 1, 5),)),
        ("awareness", (AwarenessEntry(111, 2, "null"),)),  # the close's removal
    ]
    share_at = actions.index(Share("update", persisted[0].update))
    assert actions[share_at - 1] == persisted[0]


def test_one_node_shares_nothing() -> None:
    actions = scenario(make_room(shared=False))
    assert of(Share, actions) == []
    assert of(Reserve, actions) == []


def test_left_carries_the_removal_clock() -> None:
    room = make_room()
    admit(room, 1, 111, 5)
    room.receive(1, AwarenessMessage(presence(111, clock=4, user=5)), 0)
    [*_, left] = room.close(1, 10, clean=False)
    assert isinstance(left, Left)
    assert (left.clean, left.awareness_clock) == (False, 5)


def test_a_session_taken_over_on_another_node_leaves_its_presence_in_place() -> None:
    room = make_room()
    admit(room, 1, 111, 5)
    admit(room, 2, 222, 6)
    actions = room.close(1, 30, clean=False, keep_presence=True)
    assert [type(a) for a in actions] == [Left]
    assert actions[0].awareness_clock is None  # type: ignore[union-attr]
    # Its state is now the other node's to speak for: still shown here, no longer local.
    assert decode_awareness(room.local_presence()) == (entry(222, 0, 6),)
    [relayed] = room.remote_awareness(presence(111, clock=1, user=5))
    assert relayed == Broadcast(encode(AwarenessMessage(presence(111, clock=1, user=5))), (2,))


# --- what other nodes share -----------------------------------------------------------


def test_a_remote_update_reaches_every_local_session_and_is_neither_persisted_nor_shared() -> None:
    room = make_room(max_document_size=10)  # another node applied the limit already
    admit(room, 1, 111, 5)
    admit(room, 2, 222, 6)
    update = an_update("from another node")
    assert room.remote_update(update) == [Broadcast(encode(SyncUpdate(update)), (1, 2))]
    assert text_of(room) == "from another node"
    assert room.remote_update(update) == []  # already contained: nothing to relay


def test_a_remote_update_with_nobody_here_is_applied_silently() -> None:
    room = make_room()
    assert room.remote_update(an_update("x")) == []
    assert text_of(room) == "x"


@pytest.mark.parametrize("data", [b"\x05\xff\xff", b"", b"\x01", b"\x01\x01"])
def test_malformed_remote_data_is_counted_not_raised(data: bytes) -> None:
    room = make_room()
    admit(room, 1, 111, 5)
    before = room.doc.get_update()
    assert room.remote_update(data) == [Note("remote-invalid")]
    assert room.remote_awareness(data) == [Note("remote-invalid")]
    assert room.doc.get_update() == before
    assert decode_awareness(room.local_presence()) == (entry(111, 0, 5),)


def test_remote_awareness_beyond_the_entry_bound_is_refused() -> None:
    room = make_room(max_awareness_entries=2)
    payload = encode_awareness([entry(1), entry(2), entry(3)])
    assert room.remote_awareness(payload) == [Note("remote-invalid")]


def test_remote_awareness_cannot_speak_for_a_local_session() -> None:
    room = make_room()
    admit(room, 1, 111, 5)
    payload = encode_awareness([entry(111, 9, 7), AwarenessEntry(111, 9, "null"), entry(333, 0)])
    [relayed] = room.remote_awareness(payload)
    assert sent_entries(relayed.data) == (entry(333, 0),)  # type: ignore[union-attr]
    assert decode_awareness(room.local_presence()) == (entry(111, 0, 5),)


@pytest.mark.parametrize(
    ("incoming", "changed"),
    [
        (entry(333, 2), True),  # new by clock
        (entry(333, 1), False),  # the clock we have
        (entry(333, 0), False),  # older
        (AwarenessEntry(333, 1, "null"), True),  # a removal at the same clock
        (AwarenessEntry(333, 2, "null"), True),
        (AwarenessEntry(333, 0, "null"), False),  # older than what we have
        (AwarenessEntry(444, 0, "null"), False),  # the removal of a state we never had
    ],
)
def test_remote_awareness_is_applied_by_clock(incoming: AwarenessEntry, changed: bool) -> None:
    room = make_room()
    admit(room, 1, 111, 5)
    room.remote_awareness(presence(333, clock=1))
    actions = room.remote_awareness(encode_awareness([incoming]))
    assert actions == ([Broadcast(encode(AwarenessMessage(encode_awareness([incoming]))), (1,))]
                       if changed else [])


def test_a_gone_remote_session_is_removed_for_every_local_session() -> None:
    room = make_room()
    admit(room, 1, 111, 5)
    room.remote_awareness(presence(333, clock=4))
    [relayed] = room.remote_gone(333)
    assert sent_entries(relayed.data) == (AwarenessEntry(333, 5, "null"),)  # type: ignore[union-attr]
    assert room.remote_gone(333) == []  # once
    assert room.remote_gone(111) == []  # a local session is this node's to end
    assert decode_awareness(room.local_presence()) == (entry(111, 0, 5),)
    room.open(2, 0)
    room.receive(2, AwarenessMessage(presence(222, user=6)), 0)
    present = of(Send, room.reserved(2, ADMITTED, 0))[1]
    assert [e.client_id for e in sent_entries(present.data)] == [111, 222]


def test_a_late_joiner_here_sees_presence_from_every_node() -> None:
    room = make_room()
    room.remote_awareness(encode_awareness([entry(333, 2, 8), entry(444, 0, 9)]))
    admit(room, 1, 111, 5)
    room.open(2, 0)
    room.receive(2, AwarenessMessage(presence(222, user=6)), 0)
    present = of(Send, room.reserved(2, ADMITTED, 0))[1]
    assert sorted(e.client_id for e in sent_entries(present.data)) == [111, 222, 333, 444]


# --- the sync exchange between nodes --------------------------------------------------


def test_two_nodes_converge_by_exchanging_diffs_and_presence() -> None:
    a, b = make_room(), make_room()
    admit(a, 1, 111, 5)
    admit(b, 1, 222, 6)
    a.receive(1, SyncUpdate(an_update("on a")), 0)
    b.receive(1, SyncUpdate(an_update("on b")), 0)
    # a asks (its state vector); b replies with what a lacks, its presence and its vector;
    # a then shares what b lacks.
    a.remote_update(b.diff(a.state_vector()))
    a.remote_awareness(b.local_presence())
    b.remote_update(a.diff(b.state_vector()))
    b.remote_awareness(a.local_presence())
    assert text_of(a) == text_of(b)
    assert "on a" in text_of(a)
    assert "on b" in text_of(a)
    # Nothing is left to exchange either way.
    assert a.remote_update(b.diff(a.state_vector())) == []
    assert b.remote_update(a.diff(b.state_vector())) == []
    for room, local, remote in ((a, 111, 222), (b, 222, 111)):
        assert [e.client_id for e in decode_awareness(room.local_presence())] == [local]
        room.open(9, 0)
        room.receive(9, AwarenessMessage(presence(999)), 0)
        present = of(Send, room.reserved(9, ADMITTED, 0))[1]
        assert sorted(e.client_id for e in sent_entries(present.data)) == sorted(
            [local, remote, 999]
        )


def test_an_empty_room_has_an_empty_presence_and_an_invalid_vector_is_refused() -> None:
    room = make_room()
    assert decode_awareness(room.local_presence()) == ()
    assert room.remote_update(room.diff(make_room().state_vector())) == []
    with pytest.raises(ProtocolError):
        room.diff(b"\x05\xff")
