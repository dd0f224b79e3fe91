"""Who the client is behind trusted proxies (rtc.forwarded), as tables."""

from __future__ import annotations

import pytest

from rtc.forwarded import NO_PROXIES, TrustedProxies, client_address

PROXIES = TrustedProxies.parse(["127.0.0.1", "10.0.0.0/8", "::1", "fd00::/8"])

XFF = "X-Forwarded-For"


@pytest.mark.parametrize(
    ("peer", "headers", "expected"),
    [
        # No headers, or from an untrusted peer: the peer, whatever the headers claim.
        ("203.0.113.9", [], "203.0.113.9"),
        ("203.0.113.9", [(XFF, "198.51.100.1")], "203.0.113.9"),
        ("203.0.113.9", [("Forwarded", "for=198.51.100.1")], "203.0.113.9"),
        ("203.0.113.9", [(XFF, "127.0.0.1")], "203.0.113.9"),
        ("127.0.0.1", [], "127.0.0.1"),
        # One trusted proxy: the hop it appended.
        ("127.0.0.1", [(XFF, "198.51.100.1")], "198.51.100.1"),
        ("127.0.0.1", [("x-forwarded-for", " 198.51.100.1 ")], "198.51.100.1"),
        # A spoofing client wrote the left part; the right-most untrusted hop wins.
        ("127.0.0.1", [(XFF, "1.1.1.1, 198.51.100.1")], "198.51.100.1"),
        ("127.0.0.1", [(XFF, "127.0.0.1, 198.51.100.1")], "198.51.100.1"),
        # HAProxy adds its own line after the client's: one list, in order.
        ("127.0.0.1", [(XFF, "1.1.1.1"), (XFF, "198.51.100.1")], "198.51.100.1"),
        # A chain of trusted proxies is skipped.
        ("127.0.0.1", [(XFF, "1.1.1.1, 198.51.100.1, 10.1.2.3, 10.9.9.9")], "198.51.100.1"),
        # Every hop trusted: the left-most (a client on a proxy's own network).
        ("127.0.0.1", [(XFF, "10.0.0.5, 10.1.2.3")], "10.0.0.5"),
        # Ports and IPv6, normalised.
        ("127.0.0.1", [(XFF, "198.51.100.1:5678")], "198.51.100.1"),
        ("127.0.0.1", [(XFF, "2001:DB8::0:1")], "2001:db8::1"),
        ("127.0.0.1", [(XFF, "[2001:db8::1]:443")], "2001:db8::1"),
        ("127.0.0.1", [(XFF, "::ffff:198.51.100.1")], "198.51.100.1"),
        ("::1", [(XFF, "198.51.100.1")], "198.51.100.1"),
        ("::ffff:127.0.0.1", [(XFF, "198.51.100.1")], "198.51.100.1"),
        ("::ffff:203.0.113.9", [(XFF, "198.51.100.1")], "203.0.113.9"),
        ("fd00::7", [(XFF, "2001:db8::2, fd12::1")], "2001:db8::2"),
        # Garbage ends the walk at the trusted hop that forwarded it, never at a claim.
        ("127.0.0.1", [(XFF, "")], "127.0.0.1"),
        ("127.0.0.1", [(XFF, "unknown")], "127.0.0.1"),
        ("127.0.0.1", [(XFF, "evil.example")], "127.0.0.1"),
        ("127.0.0.1", [(XFF, "198.51.100.1, not-an-ip")], "127.0.0.1"),
        ("127.0.0.1", [(XFF, "198.51.100.1,,")], "127.0.0.1"),
        ("127.0.0.1", [(XFF, "198.51.100.1, garbage, 10.0.0.2")], "10.0.0.2"),
        ("127.0.0.1", [(XFF, "198.51.100.1:http")], "127.0.0.1"),
        ("127.0.0.1", [(XFF, "[198.51.100.1]")], "127.0.0.1"),
        ("127.0.0.1", [(XFF, "[2001:db8::1")], "127.0.0.1"),
        ("127.0.0.1", [(XFF, "1.2.3.4.5")], "127.0.0.1"),
        ("127.0.0.1", [(XFF, "\uff11.\uff12.\uff13.\uff14")], "127.0.0.1"),  # fullwidth
        ("127.0.0.1", [(XFF, "1" * 5000)], "127.0.0.1"),
        # An unparseable peer is never trusted, and comes back as it is.
        ("unknown", [(XFF, "198.51.100.1")], "unknown"),
    ],
)
def test_x_forwarded_for(peer: str, headers: list[tuple[str, str]], expected: str) -> None:
    assert client_address(peer, headers, PROXIES) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("for=198.51.100.1", "198.51.100.1"),
        ("For=198.51.100.1;proto=https;by=127.0.0.1", "198.51.100.1"),
        ("proto=https; for=198.51.100.1", "198.51.100.1"),
        ('for="198.51.100.1:4711"', "198.51.100.1"),
        ('for="[2001:db8:cafe::17]:4711"', "2001:db8:cafe::17"),
        ('for="[2001:db8:cafe::17]"', "2001:db8:cafe::17"),
        ('for="[2001:db8:cafe::17]:_port"', "2001:db8:cafe::17"),
        ("for=1.1.1.1, for=198.51.100.1", "198.51.100.1"),
        ("for=198.51.100.1, for=10.0.0.2;by=127.0.0.1", "198.51.100.1"),
        ("for=10.0.0.3, for=10.0.0.2", "10.0.0.3"),
        # A quoted comma or semicolon does not split an element.
        ('for=198.51.100.1;ext="a,b;c", for=10.0.0.2', "198.51.100.1"),
        # Obfuscated, unknown, missing, doubled or broken: the walk ends there.
        ("for=unknown", "127.0.0.1"),
        ("for=_hidden", "127.0.0.1"),
        ("for=198.51.100.1, for=_hidden, for=10.0.0.2", "10.0.0.2"),
        ("proto=https", "127.0.0.1"),
        ("for=1.1.1.1;for=198.51.100.1", "127.0.0.1"),
        ('for="198.51.100.1', "127.0.0.1"),
        ('for="198.51.100.1\\"', "127.0.0.1"),
        ("for=[2001:db8::1]", "2001:db8::1"),  # unquoted brackets: lenient, still an address
        ("", "127.0.0.1"),
        (";;,,", "127.0.0.1"),
    ],
)
def test_forwarded(value: str, expected: str) -> None:
    assert client_address("127.0.0.1", [("Forwarded", value)], PROXIES) == expected


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        # Both headers naming one client: that client.
        ([(XFF, "198.51.100.1"), ("Forwarded", "for=198.51.100.1")], "198.51.100.1"),
        # Behind an X-Forwarded-For proxy, a client's own Forwarded; behind a Forwarded
        # proxy, a client's own X-Forwarded-For: two stories, the peer's address.
        ([("Forwarded", "for=1.1.1.1"), (XFF, "198.51.100.1")], "127.0.0.1"),
        ([(XFF, "1.1.1.1"), ("Forwarded", "for=198.51.100.1")], "127.0.0.1"),
    ],
)
def test_both_headers(headers: list[tuple[str, str]], expected: str) -> None:
    assert client_address("127.0.0.1", headers, PROXIES) == expected


def test_nobody_is_trusted_by_default() -> None:
    assert not NO_PROXIES
    assert not TrustedProxies.parse([])
    assert client_address("127.0.0.1", [(XFF, "198.51.100.1")], NO_PROXIES) == "127.0.0.1"
    assert client_address("::ffff:127.0.0.1", [], NO_PROXIES) == "127.0.0.1"


def test_everyone_trusts_every_hop() -> None:
    everyone = TrustedProxies.parse(["*"])
    assert client_address("203.0.113.9", [(XFF, "1.1.1.1, 198.51.100.1")], everyone) == "1.1.1.1"
    assert client_address("203.0.113.9", [(XFF, "junk, 198.51.100.1")], everyone) == (
        "198.51.100.1"
    )


@pytest.mark.parametrize(
    ("entries", "trusted", "untrusted"),
    [
        (["127.0.0.1"], "127.0.0.1", "127.0.0.2"),
        (["10.0.0.0/8"], "10.255.0.1", "11.0.0.1"),
        ([" 192.168.0.0/16 "], "192.168.3.4", "192.169.0.1"),
        (["::1"], "::1", "::2"),
        (["[::1]"], "::1", "::2"),
        (["2001:db8::/32"], "2001:db8:1::5", "2001:db9::1"),
    ],
)
def test_parse_trusts(entries: list[str], trusted: str, untrusted: str) -> None:
    proxies = TrustedProxies.parse(entries)
    assert client_address(trusted, [(XFF, "198.51.100.1")], proxies) == "198.51.100.1"
    assert client_address(untrusted, [(XFF, "198.51.100.1")], proxies) == untrusted


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("localhost", "'localhost' is not an IP address or CIDR"),
        ("10.0.0.1/8", "'10.0.0.1/8' has host bits set; did you mean 10.0.0.0/8?"),
        ("1.2.3.4/33", "'1.2.3.4/33' is not an IP address or CIDR"),
        ("1.2.3", "'1.2.3' is not an IP address or CIDR"),
        ("", "'' is not an IP address or CIDR"),
        ("**", "'**' is not an IP address or CIDR"),
    ],
)
def test_parse_names_a_bad_entry(entry: str, message: str) -> None:
    with pytest.raises(ValueError, match="forwarded_allow_ips: ") as raised:
        TrustedProxies.parse(["127.0.0.1", entry])
    assert message in str(raised.value)
