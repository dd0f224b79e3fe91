"""The structural check of Yjs updates: real updates pass, counts beyond their bytes do not."""

from __future__ import annotations

import random
from typing import Any

import pytest
from pycrdt import Array, Doc, Map, Text, XmlElement, XmlFragment, XmlText

from rtc.errors import ProtocolError
from rtc.protocol import write_var_uint as v
from rtc.yupdate import check_state_vector, check_update


def edited_doc(seed: int) -> tuple[Doc[Any], list[bytes]]:
    """A document put through random edits of every shared type, and its updates."""
    rng = random.Random(seed)
    doc: Doc[Any] = Doc()
    text, meta = doc.get("content", type=Text), doc.get("meta", type=Map)
    items, xml = doc.get("list", type=Array), doc.get("xml", type=XmlFragment)
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    values = [1, 2.5, "s", None, True, [1, "x", {"k": [None]}], {"n": {"m": 1}}, 2**40, -5, b"b"]
    for _ in range(rng.randint(1, 40)):
        roll = rng.random()
        if roll < 0.3:
            text.insert(rng.randint(0, len(text)), rng.choice(["a", "hello", "x" * 50]))
        elif roll < 0.4 and len(text) > 2:
            start = rng.randint(0, len(text) - 2)
            del text[start : start + 1]
        elif roll < 0.5 and len(text):
            text.format(0, len(text), {"bold": True})
        elif roll < 0.6:
            meta[rng.choice("abc")] = rng.choice(values)
        elif roll < 0.7:
            items.append(rng.choice(values))
        elif roll < 0.8:
            meta["sub"] = Map({"q": 1})
            items.append(Text("inner"))
        elif roll < 0.9:
            xml.children.append(XmlElement("p", {"class": "c"}, [XmlText("hi")]))
        else:
            text.insert_embed(0, {"image": "x.png"})
    return doc, updates


@pytest.mark.parametrize("seed", range(60))
def test_every_real_update_passes(seed: int) -> None:
    doc, updates = edited_doc(seed)
    for update in [*updates, doc.get_update()]:
        check_update(update)
    check_state_vector(doc.get_state())


def item(content_ref: int, content: bytes) -> bytes:
    """One client, one item under the root type "t", then an empty delete set."""
    return v(1) + v(1) + v(7) + v(0) + bytes([content_ref]) + v(1) + v(1) + b"t" + content + b"\0"


@pytest.mark.parametrize(
    "update",
    [
        item(8, v(1) + b"\x76" + v(2**27) + v(1) + b"k\x7f"),  # an `any` object of 2**27 keys
        item(8, v(1) + b"\x75" + v(2**27) + b"\x7f"),  # an `any` array
        item(8, v(2**27) + b"\x7f"),  # ContentAny
        item(2, v(2**27) + v(1) + b"1"),  # ContentJSON
        v(2**30) + b"\0",  # client blocks
        v(1) + v(2**30) + v(7) + v(0) + b"\0",  # structs of one client
        b"\0" + v(2**30) + b"\1",  # delete set clients
        b"\0" + v(1) + v(5) + v(2**30) + b"\0",  # deletes of one client
        item(4, v(2**20) + b"abc"),  # a string longer than the update
        item(31, b""),  # unknown content
        item(8, v(1) + b"\x70"),  # unknown value type
    ],
)
def test_counts_beyond_their_bytes_are_refused_before_yrs(update: bytes) -> None:
    with pytest.raises(ProtocolError, match="invalid document update"):
        check_update(update)


def test_state_vector_counts_are_checked() -> None:
    check_state_vector(v(1) + v(5) + v(9))
    with pytest.raises(ProtocolError, match="entries declared"):
        check_state_vector(v(2**40) + v(5))
