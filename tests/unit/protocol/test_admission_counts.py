"""Unit tests for asap.protocol.admission: per-peer keys and bounded counts."""

from __future__ import annotations

import pytest

from asap.protocol.admission import Counts, peer_key


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("1.2.3.4", "1.2.3.4"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        ("::1", "::/64"),
        ("::ffff:10.0.0.7", "10.0.0.7"),
        ("fe80::1%eth0", "fe80::/64"),
        ("unknown", "unknown"),
        ("example.org", "example.org"),
    ],
)
def test_peer_key_groups_ipv6_by_64(host: str, key: str) -> None:
    """IPv4 counts by address, IPv6 by its /64 (IPv4-mapped as IPv4); other names as they are."""
    assert peer_key(host) == key


def test_every_address_of_a_64_is_one_peer() -> None:
    """Rotating the low 64 bits of an IPv6 address does not make a new peer."""
    keys = {peer_key(f"2001:db8:0:1:{n:x}::{n:x}") for n in range(1, 500)}
    assert keys == {"2001:db8:0:1::/64"}


def test_counts_refuse_past_the_limit_per_key() -> None:
    """Each key holds at most ``limit`` slots; other keys are not affected."""
    counts = Counts(2)
    assert counts.try_acquire("a")
    assert counts.try_acquire("a")
    assert not counts.try_acquire("a")
    assert counts.try_acquire("b")
    assert counts.held("a") == 2
    counts.release("a")
    assert counts.try_acquire("a")


def test_counts_forget_keys_at_zero() -> None:
    """A key whose slots are all given back leaves the map: its size is bounded by slots held."""
    counts = Counts(1)
    for n in range(10_000):
        assert counts.try_acquire(n)
        assert len(counts) == 1
        counts.release(n)
        assert len(counts) == 0
    counts.release("never held")
    assert len(counts) == 0


def test_zero_limit_counts_without_refusing() -> None:
    """A limit of 0 never refuses, and still forgets keys at zero."""
    counts = Counts(0)
    assert all(counts.try_acquire("a") for _ in range(1000))
    for _ in range(1000):
        counts.release("a")
    assert len(counts) == 0


def test_negative_limit_is_refused() -> None:
    """A negative limit is a configuration error."""
    with pytest.raises(ValueError, match="limit"):
        Counts(-1)
