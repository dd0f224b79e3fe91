"""Where each key of a TOML or JSON document starts: its 1-based line, for error messages.

Not a parser: both scanners run only on text that ``tomllib`` or ``json`` already accepted, and
follow the grammar without checking it. Each one records, for every table key, dotted key,
inline-table key and list item, the line where it is first named, under its `DocumentKey`
(``("streams", "a", "events", 1)``). A key the text never names (a missing one) takes the line
of its nearest enclosing key: see `line_of`. No I/O here.
"""

from __future__ import annotations

import json
import re
import tomllib
from bisect import bisect_left
from collections.abc import Mapping

from tracks.streams.routing import DocumentKey

__all__ = ["json_lines", "line_of", "toml_lines"]

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_SCALAR = re.compile(r"[^,\]}\n#]*")  # numbers, booleans, dates: up to the next separator
_JSON_SPACE = re.compile(r"[ \t\r\n]*")


def line_of(lines: Mapping[DocumentKey, int], key: DocumentKey) -> int:
    """The line of ``key``, else of its nearest enclosing key the text names, else 1."""
    for end in range(len(key), 0, -1):
        found = lines.get(key[:end])
        if found is not None:
            return found
    return 1


def toml_lines(text: str) -> dict[DocumentKey, int]:
    """Every key and list item of a TOML document that `tomllib.loads` accepted, to its line.

    Raises:
        ValueError: ``text`` is not TOML after all.
    """
    scan = _Toml(text)
    try:
        scan.document()
    except (IndexError, ValueError) as exc:  # only on text tomllib would have refused
        raise ValueError(f"not a TOML document (at character {scan.pos})") from exc
    return scan.lines


def json_lines(text: str) -> dict[DocumentKey, int]:
    """Every member and item of a JSON document that `json.loads` accepted, to its line.

    Raises:
        ValueError: ``text`` is not JSON after all.
    """
    scan = _Json(text)
    try:
        scan.value(())
    except (IndexError, ValueError) as exc:  # only on text json would have refused
        raise ValueError(f"not a JSON document (at character {scan.pos})") from exc
    return scan.lines


class _Scan:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.lines: dict[DocumentKey, int] = {}
        self._newlines = [index for index, char in enumerate(text) if char == "\n"]

    def mark(self, key: DocumentKey, pos: int) -> None:
        """``key`` starts at ``pos``, unless an earlier line named it first."""
        self.lines.setdefault(key, bisect_left(self._newlines, pos) + 1)

    def peek(self) -> str:
        """The next character; ``""`` at the end."""
        return self.text[self.pos : self.pos + 1]


class _Toml(_Scan):
    """TOML 1.0 as far as keys go. Every loop moves on or raises, even on text it should not see."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self._arrays_of_tables: dict[DocumentKey, int] = {}  # [[key]] -> elements so far

    def document(self) -> None:
        table: DocumentKey = ()
        while self.skip(newlines=True):
            table = self.header() if self.peek() == "[" else self.pair(table)

    def skip(self, *, newlines: bool = False) -> str:
        """Past spaces, tabs and comments (and line ends when ``newlines``); the next char."""
        text = self.text
        while self.pos < len(text):
            char = text[self.pos]
            if char == "#":
                end = text.find("\n", self.pos)
                self.pos = len(text) if end < 0 else end
            elif char in " \t" or (newlines and char in "\r\n"):
                self.pos += 1
            else:
                break
        return self.peek()

    def header(self) -> DocumentKey:
        """``[a.b]`` or ``[[a.b]]``: the key of the table that the pairs below it fill."""
        start = self.pos
        many = self.text.startswith("[[", start)
        self.pos += 2 if many else 1
        names = self.keys()
        if not self.text.startswith("]]" if many else "]", self.pos):
            raise ValueError("no closing ]")
        self.pos += 2 if many else 1
        key: DocumentKey = ()
        for depth, name in enumerate(names, start=1):
            key = (*key, name)
            self.mark(key, start)
            if many and depth == len(names):
                index = self._arrays_of_tables.get(key, 0)
                self._arrays_of_tables[key] = index + 1
                key = (*key, index)
                self.mark(key, start)
            elif key in self._arrays_of_tables:  # [a.b] under [[a]]: a's latest element
                key = (*key, self._arrays_of_tables[key] - 1)
        return key

    def pair(self, table: DocumentKey) -> DocumentKey:
        """``a.b = value`` inside ``table``; ``table`` again (a pair opens no table)."""
        start = self.pos
        key = table
        for name in self.keys():
            key = (*key, name)
            self.mark(key, start)
        if self.peek() != "=":
            raise ValueError("no '='")
        self.pos += 1
        self.skip()
        self.value(key)
        return table

    def keys(self) -> list[str]:
        """A dotted key: bare, "basic" or 'literal' parts."""
        names: list[str] = []
        while True:
            if self.skip() in ('"', "'"):
                # The part's own value, escapes and all, as TOML itself reads it.
                names.append(next(iter(tomllib.loads(f"{self.string()} = 0"))))
            else:
                match = _BARE_KEY.match(self.text, self.pos)
                if match is None:
                    raise ValueError("no key")
                names.append(match[0])
                self.pos = match.end()
            if self.skip() != ".":
                return names
            self.pos += 1

    def value(self, key: DocumentKey) -> None:
        char = self.peek()
        if char in ("[", "{"):
            self.items(key, closing="]" if char == "[" else "}")
        elif char in ('"', "'"):
            self.string()
        else:
            match = _SCALAR.match(self.text, self.pos)
            if match is None or not match[0].strip():
                raise ValueError("no value")
            self.pos = match.end()

    def items(self, key: DocumentKey, *, closing: str) -> None:
        """An array's items (``closing`` is ``]``) or an inline table's pairs (``}``)."""
        self.pos += 1
        index = 0
        while self.skip(newlines=True) not in ("", closing):
            if closing == "]":
                self.mark((*key, index), self.pos)
                self.value((*key, index))
            else:
                self.pair(key)
            if self.skip(newlines=True) == ",":
                self.pos += 1
            index += 1
        if self.peek() != closing:
            raise ValueError(f"no closing {closing}")
        self.pos += 1

    def string(self) -> str:
        """Past one string of any of TOML's four kinds; its source text."""
        text, start = self.text, self.pos
        quote = text[start : start + 3]
        if quote == "'''":
            end = text.index(quote, start + 3)
        elif quote == '"""':
            end = start + 3
            while not text.startswith(quote, end):
                end += 2 if text[end] == "\\" else 1
        else:
            quote = text[start]
            end = start + 1
            while text[end] != quote:
                end += 2 if quote == '"' and text[end] == "\\" else 1
        close = end + len(quote)
        # Up to two more quotes belong to a multi-line string's content: """a""""" is 'a""'.
        while len(quote) == 3 and close < end + 5 and text[close : close + 1] == quote[0]:
            close += 1
        self.pos = close
        return text[start:close]


class _Json(_Scan):
    _decoder = json.JSONDecoder()

    def skip(self) -> str:
        match = _JSON_SPACE.match(self.text, self.pos)
        self.pos = match.end() if match else self.pos
        return self.peek()

    def value(self, key: DocumentKey) -> None:
        opening = self.skip()
        if opening not in ("{", "["):
            # Strings (escapes and all), numbers and literals: the json module's own scanner.
            _, self.pos = self._decoder.raw_decode(self.text, self.pos)
            return
        closing = "}" if opening == "{" else "]"
        self.pos += 1
        index = 0
        while self.skip() != closing:
            member: DocumentKey = (*key, index)
            if opening == "{":
                start = self.pos
                name, self.pos = self._decoder.raw_decode(self.text, self.pos)
                member = (*key, name)
                # json.loads keeps the last of two members of one name: so do we.
                for earlier in [found for found in self.lines if found[: len(member)] == member]:
                    del self.lines[earlier]
                self.mark(member, start)
                if self.skip() != ":":
                    raise ValueError("no ':'")
                self.pos += 1
            else:
                self.mark(member, self.pos)
            self.value(member)
            if self.skip() == ",":
                self.pos += 1
            index += 1
        self.pos += 1
