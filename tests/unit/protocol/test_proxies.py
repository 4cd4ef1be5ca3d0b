"""TrustedProxies: which X-Forwarded-For entry names the client (pure, no I/O)."""

from __future__ import annotations

import ipaddress

import pytest

from asap.protocol.proxies import (
    MAX_HOPS,
    TrustedProxies,
    parse_address,
    parse_peer,
    peer_string,
)


PROXIES = TrustedProxies(["10.0.0.0/8", "2001:db8:1::/48", "192.0.2.1"])
PROXY = ipaddress.ip_address("10.0.0.1")


def client(forwarded: list[str], peer: str = "10.0.0.1") -> str | None:
    found = PROXIES.client_of(ipaddress.ip_address(peer), forwarded)
    return None if found is None else str(found)


@pytest.mark.parametrize(
    ("forwarded", "expected"),
    [
        (["203.0.113.7"], "203.0.113.7"),
        (["198.51.100.1, 203.0.113.7"], "203.0.113.7"),  # the left one is the client's claim
        (["203.0.113.7, 10.9.9.9, 192.0.2.1"], "203.0.113.7"),  # skips trusted hops
        (["198.51.100.1", "203.0.113.7,10.1.1.1"], "203.0.113.7"),  # several header lines
        (["10.1.1.1, 10.2.2.2"], "10.1.1.1"),  # all trusted: the left-most
        ([" 203.0.113.7:4711 "], "203.0.113.7"),
        (["[2001:db8::9]:443"], "2001:db8::9"),
        (["2001:db8::9, 2001:db8:1::5"], "2001:db8::9"),
        (["::ffff:203.0.113.7"], "203.0.113.7"),  # IPv4-mapped is IPv4
        ([], None),
        (["unknown"], None),
        (["203.0.113.7, junk"], None),
        (["203.0.113.7, "], None),
    ],
)
def test_the_right_most_untrusted_entry_is_the_client(
    forwarded: list[str], expected: str | None
) -> None:
    assert client(forwarded) == expected


def test_an_untrusted_peer_is_not_believed() -> None:
    assert client(["203.0.113.7"], peer="198.51.100.1") is None
    assert PROXIES.client_of(None, ["203.0.113.7"]) is None


def test_an_ipv4_mapped_peer_is_trusted_as_ipv4() -> None:
    assert client(["203.0.113.7"], peer="::ffff:10.0.0.1") == "203.0.113.7"


def test_at_most_max_hops_entries_are_examined() -> None:
    """A chain longer than MAX_HOPS is cut: the left-most examined trusted entry, not further."""
    hops = [f"10.0.0.{n}" for n in range(1, MAX_HOPS + 1)]
    assert client(["203.0.113.7", *hops]) == hops[0]
    assert client(["203.0.113.7", *hops[1:]]) == "203.0.113.7"


def test_no_networks_is_off() -> None:
    proxies = TrustedProxies([])
    assert not proxies
    assert proxies.client_of(PROXY, ["203.0.113.7"]) is None


def test_bad_networks_are_refused() -> None:
    with pytest.raises(ValueError, match="does not appear"):
        TrustedProxies(["10.0.0.0/33x"])


@pytest.mark.parametrize(
    ("peer", "expected"),
    [
        ("ipv4:127.0.0.1:5000", "127.0.0.1"),
        ("ipv6:[::1]:5000", "::1"),
        ("ipv6:%5B::1%5D:5000", "::1"),
        ("ipv4:203.0.113.7", "203.0.113.7"),
        ("ipv6:[2001:db8::1]", "2001:db8::1"),
        ("unix:/tmp/socket", None),
        ("unknown", None),
    ],
)
def test_peer_strings_parse(peer: str, expected: str | None) -> None:
    found = parse_peer(peer)
    assert (None if found is None else str(found)) == expected


def test_peer_string_round_trips() -> None:
    for text in ("203.0.113.7", "2001:db8::1"):
        address = ipaddress.ip_address(text)
        assert parse_peer(peer_string(address)) == address
    assert parse_address("[2001:db8::1") is None
