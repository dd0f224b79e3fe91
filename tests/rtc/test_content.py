"""A room's document content: what an update changed, and letting the document go."""

from __future__ import annotations

import gc
import weakref
from typing import Any

from pycrdt import Doc, Text

from rtc.content import Content


def text_update(text: str, *, client_id: int = 1) -> bytes:
    doc: Doc[Any] = Doc(client_id=client_id)
    doc.get("content", type=Text).insert(0, text)
    return doc.get_update()


def test_apply_returns_what_the_document_gained_and_nothing_twice() -> None:
    content = Content(Doc())
    update = text_update("hello")
    assert content.apply(update) == update
    assert content.apply(update) is None
    assert str(content.doc.get("content", type=Text)) == "hello"


def test_a_closed_content_lets_its_document_go_without_the_garbage_collector() -> None:
    # pycrdt's observer wrapper holds the document, and yrs holds the wrapper where the
    # garbage collector cannot see it: an unobserved document would live forever.
    gc.collect()
    gc.disable()
    try:
        content = Content(Doc())
        content.apply(text_update("x" * 10_000))
        document = weakref.ref(content.doc)
        content.close()
        del content
        assert document() is None
    finally:
        gc.enable()


def test_close_twice_is_harmless() -> None:
    content = Content(Doc())
    content.close()
    content.close()
