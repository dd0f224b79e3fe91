"""Session sampling: FNV-1a vectors, rates, and bit-for-bit agreement with the browser client."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from tracks import Event, MemoryRecorder, SampledRecorder
from tracks.sampling import fnv1a_32, session_fraction, session_in_sample

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "demo" / "src" / "rtc-tracks.js"
FACTOR = float(os.environ.get("RTC_TEST_TIMEOUT_FACTOR", "1"))


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        # Reference values from the FNV authors' test suite (isthe.com/chongo/src/fnv/test_fnv.c).
        (b"", 0x811C9DC5),
        (b"a", 0xE40C292C),
        (b"foobar", 0xBF9CF968),
    ],
)
def test_fnv1a_32_reference_vectors(data: bytes, expected: int) -> None:
    assert fnv1a_32(data) == expected


def test_fraction_is_the_hash_of_the_key_over_2_to_the_32() -> None:
    assert session_fraction(1, 42, 3141592653) == fnv1a_32(b"1:42:3141592653") / 2**32
    assert session_fraction(None, None, None) == fnv1a_32(b"::") / 2**32
    assert session_fraction(1, 42, "abc") == fnv1a_32(b"1:42:abc") / 2**32
    # Written as JavaScript writes them.
    assert session_fraction(True, 2.0, 3) == session_fraction("true", 2, "3")


@pytest.mark.parametrize(
    ("rate", "kept"),
    [(1, 1000), (1.0, 1000), (0, 0), (0.0, 0)],
)
def test_rate_one_keeps_all_and_zero_none(rate: float, kept: int) -> None:
    assert sum(session_in_sample(1, 2, n, rate) for n in range(1000)) == kept


def test_rate_keeps_about_that_fraction() -> None:
    kept = sum(session_in_sample(n % 3, n % 11, n, 0.1) for n in range(20_000))
    assert 1800 < kept < 2200


@pytest.mark.parametrize("rate", [-0.1, 1.5, float("nan")])
def test_bad_rate(rate: float) -> None:
    with pytest.raises(ValueError, match="sample rate"):
        session_in_sample(1, 2, 3, rate)


def test_sampled_recorder_agrees_with_session_in_sample() -> None:
    sampled = SampledRecorder(MemoryRecorder(), 0.3)
    for n in range(500):
        event = Event("jetpack_rtc_join", {"blog_id": 1, "post_id": 2, "session_id": n})
        assert sampled.keeps(event) == session_in_sample(1, 2, n, 0.3)


def session_keys(count: int) -> list[tuple[int, int, int]]:
    rng = random.Random(7)
    keys = [
        (rng.randint(1, 10**6), rng.randint(1, 10**9), rng.randint(0, 2**32 - 1))
        for _ in range(count - 8)
    ]
    # Edges, and a few ids beyond 32 bits (JS numbers are exact to 2**53; beyond, BigInt).
    keys += [(1, 1, 0), (1, 1, 2**32 - 1), (7, 42, 2**32), (7, 42, 2**53 - 1)]
    keys += [(7, 42, 2**53 + 1), (7, 42, 2**64 + 3), (2**31, 2**40, 10**20), (1, 2, 10**30)]
    return keys


NODE_SCRIPT = """
import { readFileSync } from 'node:fs'
const { sessionFraction, sessionInSample } = await import(process.argv[1])
const keys = JSON.parse(readFileSync(0, 'utf8'))
// Ids past 2**53 arrive as strings and become BigInts: a JS number cannot hold them exactly.
const id = (value) => (typeof value === 'string' ? BigInt(value) : value)
const out = keys.map(([b, p, s]) => {
  const [blog, post, session] = [id(b), id(p), id(s)]
  const fraction = sessionFraction(blog, post, session)
  return [fraction * 2 ** 32, sessionInSample(blog, post, session, 0.25)]
})
process.stdout.write(JSON.stringify(out))
"""


@pytest.mark.node
@pytest.mark.slow
def test_javascript_sampling_agrees_bit_for_bit() -> None:
    node = shutil.which("node")
    if node is None:
        if os.environ.get("CI"):
            pytest.fail("node is missing")
        pytest.skip("node is missing")
    keys = session_keys(100_000)
    wire = [[str(part) if part > 2**53 - 1 else part for part in key] for key in keys]
    result = subprocess.run(
        [node, "--input-type=module", "-e", NODE_SCRIPT, CLIENT.as_uri()],
        input=json.dumps(wire),
        capture_output=True,
        text=True,
        check=True,
        timeout=60 * FACTOR,
    )
    answers = json.loads(result.stdout)
    assert len(answers) == len(keys)
    mismatches = [
        (key, answer)
        for key, answer in zip(keys, answers, strict=True)
        if answer != [session_fraction(*key) * 2**32, session_in_sample(*key, 0.25)]
    ]
    assert mismatches == []
    # The hash values are integers: the fraction is exact on both sides.
    assert all(float(hash_value).is_integer() for hash_value, _ in answers)
