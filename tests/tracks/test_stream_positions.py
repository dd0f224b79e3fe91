"""The line finder behind stream configuration errors: keys to lines, by TOML and JSON rules."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from tracks.streams import DocumentKey
from tracks.streams.positions import json_lines, line_of, toml_lines

TOML = '''\
# [streams.commented]
[recorders]
warehouse = "http://x" # warehouse = 1
[streams . "a b\\u0021".props]
x = 1
[streams.a]
events = [
  "j", # ]
  'k',
  """m
""""",
]
props = { blog_id = "int", "q.r" = { s = 1 } }
d.e . f = 1979-05-27 07:32:00Z
notes = \'\'\'
[streams.fake]
events = 1
\'\'\'
[[arr]]
x = 1
[[arr]]
x = 2
[arr.sub]
y = [[1, 2], [3]]
'''


def test_toml_keys_and_items_to_their_lines() -> None:
    tomllib.loads(TOML)  # the finder only ever sees text TOML accepted
    assert toml_lines(TOML) == {
        ("recorders",): 2,
        ("recorders", "warehouse"): 3,
        ("streams",): 4,
        ("streams", "a b!"): 4,
        ("streams", "a b!", "props"): 4,
        ("streams", "a b!", "props", "x"): 5,
        ("streams", "a"): 6,
        ("streams", "a", "events"): 7,
        ("streams", "a", "events", 0): 8,
        ("streams", "a", "events", 1): 9,
        ("streams", "a", "events", 2): 10,
        ("streams", "a", "props"): 13,
        ("streams", "a", "props", "blog_id"): 13,
        ("streams", "a", "props", "q.r"): 13,
        ("streams", "a", "props", "q.r", "s"): 13,
        ("streams", "a", "d"): 14,
        ("streams", "a", "d", "e"): 14,
        ("streams", "a", "d", "e", "f"): 14,
        ("streams", "a", "notes"): 15,
        ("arr",): 19,
        ("arr", 0): 19,
        ("arr", 0, "x"): 20,
        ("arr", 1): 21,
        ("arr", 1, "x"): 22,
        ("arr", 1, "sub"): 23,
        ("arr", 1, "sub", "y"): 24,
        ("arr", 1, "sub", "y", 0): 24,
        ("arr", 1, "sub", "y", 0, 0): 24,
        ("arr", 1, "sub", "y", 0, 1): 24,
        ("arr", 1, "sub", "y", 1): 24,
        ("arr", 1, "sub", "y", 1, 0): 24,
    }


def test_json_members_and_items_to_their_lines() -> None:
    text = '{\n "a": {"b": [1,\n "x\\"y", {"c": 2}]},\n "a": {"z": [\n "a"]}\n}'
    assert json.loads(text) == {"a": {"z": ["a"]}}
    # The first "a" is gone, as json.loads dropped it.
    assert json_lines(text) == {("a",): 4, ("a", "z"): 4, ("a", "z", 0): 5}


def test_a_key_the_text_does_not_name_takes_its_tables_line() -> None:
    lines = toml_lines("[streams.a]\norigins = []\n")
    assert line_of(lines, ("streams", "a", "events")) == 1
    assert line_of(lines, ("streams", "a", "origins", 0)) == 2
    assert line_of(lines, ("recorders",)) == 1
    assert line_of({}, ()) == 1


@pytest.mark.parametrize(
    "text", ["[a\n", "[[a]\n", "x = [1, }", 'x = """abc', "x = '''a", 'x = "abc', "x = ", "= 1"]
)
def test_text_that_is_not_toml_raises_instead_of_looping(text: str) -> None:
    with pytest.raises(ValueError, match="not a TOML document"):
        toml_lines(text)


@pytest.mark.parametrize("text", ['{"a": ', '{"a" 1}', "[1, ", "[,]", '{"a": 1,'])
def test_text_that_is_not_json_raises(text: str) -> None:
    with pytest.raises(ValueError, match="not a JSON document"):
        json_lines(text)


def keys_of(value: object, key: DocumentKey = ()) -> set[DocumentKey]:
    """Every key and list index of a parsed document, as the finder names them."""
    found: set[DocumentKey] = {key} if key else set()
    if isinstance(value, dict):
        for name, item in value.items():
            found |= keys_of(item, (*key, name))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found |= keys_of(item, (*key, index))
    return found


@pytest.mark.parametrize("text", [TOML, (Path(__file__).parents[2] / "pyproject.toml").read_text()])
def test_the_finder_sees_every_key_the_parsers_see(text: str) -> None:
    document = tomllib.loads(text)
    assert set(toml_lines(text)) == keys_of(document)
    as_json = json.dumps(document, indent=1, default=str)
    lines = json_lines(as_json)
    assert set(lines) == keys_of(document)
    assert all(as_json.splitlines()[line - 1].strip() for line in lines.values())
