"""Who the client is behind trusted proxies: `X-Forwarded-For` and `Forwarded` (RFC 7239).

No I/O here. The rules, and why:

- Only a trusted direct peer is listened to. From any other peer both headers are ignored
  entirely: a client can write them as it likes (`--forwarded-allow-ips`, the name and the
  meaning uvicorn and gunicorn give it; empty trusts nobody).
- The list is walked from the right, the end the nearest proxy appended to, skipping hops
  that are themselves trusted proxies; the first untrusted one is the client. Everything
  left of it was written by that client or on its word, and is never read (nor parsed).
- When every hop is trusted, the left-most one is the client (uvicorn does the same): it
  was written by a trusted proxy.
- A hop that is not an address (garbage, an RFC 7239 `unknown` or obfuscated `_name`, a
  hostname) ends the walk: the client is then the trusted hop that forwarded it, the nearest
  address we know, never a value someone else chose.
- uvicorn reads `X-Forwarded-For` only. We also read `Forwarded` (HAProxy's `option
  forwarded`, nginx set-ups), but a proxy appends to only one of them and passes the other
  on as the client wrote it. So when both are present and name different clients, one of
  them is the client's own: the peer's address is used, never a claim that cannot be told
  from a forgery. (HAProxy's `option forwardfor` writes `X-Forwarded-For`, which is what
  deploy/haproxy.cfg uses.)
- Repeated header lines are one list, in order (RFC 9110 §5.3): HAProxy adds its own
  `X-Forwarded-For` line after any the client sent.

Addresses come back normalised (`::FFFF:10.0.0.1` is `10.0.0.1`, IPv6 in its short lower-case
form), so that one client is counted under one key.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator

__all__ = ["NO_PROXIES", "TrustedProxies", "client_address"]

_Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedProxies:
    """The proxies whose forwarding headers are believed.

    Args:
        networks: the trusted addresses, as networks (a single address is a /32 or /128).
        everyone: trust every peer and every hop (`*`): only for a server that nothing but
            its proxies can reach, since then the left-most hop, which the client wrote, wins.
    """

    __slots__ = ("_everyone", "_networks")

    def __init__(self, networks: Iterable[_Network] = (), *, everyone: bool = False) -> None:
        self._networks = tuple(networks)
        self._everyone = everyone

    @classmethod
    def parse(cls, entries: Iterable[str]) -> TrustedProxies:
        """The trusted proxies from `--forwarded-allow-ips` entries: IPv4 or IPv6 addresses,
        CIDRs (``10.0.0.0/8``, ``fd00::/8``), or ``*`` for everyone.

        Raises:
            ValueError: an entry is none of these; the message names it.
        """
        networks: list[_Network] = []
        everyone = False
        for raw in entries:
            entry = raw.strip()
            if entry == "*":
                everyone = True
                continue
            text = entry.strip("[]")
            try:
                interface = ipaddress.ip_interface(text)
            except ValueError:
                raise ValueError(
                    f"forwarded_allow_ips: {entry!r} is not an IP address or CIDR "
                    "(hostnames are not resolved)"
                ) from None
            if interface.ip != interface.network.network_address:
                # 10.0.0.1/8: a typo more likely than a wish to trust all of 10/8.
                raise ValueError(
                    f"forwarded_allow_ips: {entry!r} has host bits set; did you mean "
                    f"{interface.network}?"
                )
            networks.append(interface.network)
        return cls(networks, everyone=everyone)

    def __bool__(self) -> bool:
        return self._everyone or bool(self._networks)

    def __repr__(self) -> str:
        shown = ["*"] if self._everyone else []
        return f"TrustedProxies({', '.join(shown + [str(n) for n in self._networks])})"

    def trusts(self, address: _Address | None) -> bool:
        """Whether a hop at this address may say who it forwards (None: not an address)."""
        if self._everyone:
            return True
        if address is None:
            return False
        return any(address in network for network in self._networks)


NO_PROXIES = TrustedProxies()
"""Trusts nobody: every client is its direct peer."""


def client_address(
    peer: str, headers: Iterable[tuple[str, str]], trusted: TrustedProxies
) -> str:
    """The client's address: the peer's, or who a trusted peer forwards for.

    Args:
        peer: the direct peer's address, as the socket gives it.
        headers: the request's header lines as (name, value), any case, in order.
        trusted: the proxies believed.
    """
    peer_address = _address(peer)
    if not trusted or not trusted.trusts(peer_address):
        return str(peer_address) if peer_address is not None else peer
    start = peer_address if peer_address is not None else peer
    forwarded_for: list[str] = []
    forwarded: list[str] = []
    for name, value in headers:
        lowered = name.lower()
        if lowered == "x-forwarded-for":
            forwarded_for.append(value)
        elif lowered == "forwarded":
            forwarded.append(value)
    claims = []
    if forwarded_for:
        claims.append(_walk(start, _x_forwarded_for(",".join(forwarded_for)), trusted))
    if forwarded:
        claims.append(_walk(start, _forwarded_for(",".join(forwarded)), trusted))
    if not claims or len(set(claims)) > 1:
        return str(start)  # nothing said, or two stories: one of them is the client's
    return claims[0]


def _walk(
    start: _Address | str, hops: Iterator[_Address | None], trusted: TrustedProxies
) -> str:
    # `hops` yields right to left, lazily: what lies left of the client is never parsed.
    nearest = start
    for hop in hops:
        if hop is None:
            break  # not an address: the proxy that forwarded it is all we know
        if not trusted.trusts(hop):
            return str(hop)
        nearest = hop
    return str(nearest)


def _x_forwarded_for(value: str) -> Iterator[_Address | None]:
    for entry in reversed(value.split(",")):
        yield _node(entry.strip())


def _forwarded_for(value: str) -> Iterator[_Address | None]:
    for element in reversed(_split_quoted(value, ",")):
        found = None
        count = 0
        for pair in _split_quoted(element, ";"):
            name, equals, raw = pair.partition("=")
            if equals and name.strip().lower() == "for":
                count += 1
                found = _unquote(raw.strip())
        # An element without exactly one `for=` (or with a broken quote) says nothing usable.
        yield _node(found) if count == 1 and found is not None else None


def _split_quoted(value: str, separator: str) -> list[str]:
    """`value` split at `separator` outside quoted strings (RFC 9110 §5.6.4)."""
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in value:
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return parts


def _unquote(value: str) -> str | None:
    if not value.startswith('"'):
        return value
    if len(value) < 2 or not value.endswith('"'):
        return None
    inner, result, escaped = value[1:-1], [], False
    for char in inner:
        if escaped or char != "\\":
            result.append(char)
            escaped = False
        else:
            escaped = True
    return None if escaped else "".join(result)


def _node(text: str) -> _Address | None:
    """An address from a hop: ``1.2.3.4``, ``1.2.3.4:5678``, ``2001:db8::1``, ``[2001:db8::1]``
    or ``[2001:db8::1]:443``; None for anything else (``unknown``, ``_hidden``, garbage)."""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not _is_port(rest)):
            return None
        return _v6(host)
    if text.count(":") == 1:  # IPv4 with a port; a bare IPv6 has at least two colons
        host, _, port = text.partition(":")
        return _address(host) if _is_port(":" + port) and "." in host else None
    return _address(text)


def _is_port(text: str) -> bool:
    # RFC 7239 §6: node-port is a number or an obfuscated `_name`; either is fine to drop.
    port = text[1:]
    return text.startswith(":") and bool(port) and (port.isdigit() or port.startswith("_"))


def _v6(text: str) -> _Address | None:
    # Brackets hold IPv6 only (an IPv4-mapped one comes back as its IPv4 address).
    return _address(text) if ":" in text else None


def _address(text: str) -> _Address | None:
    if not text.isascii() or len(text) > 64:
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
