"""Admission bookkeeping without I/O: whose connections and calls count together, and bounded counts.

Theory of operation. Limits that apply "per peer" must not be evaded by a peer changing its
address within what it controls: one IPv4 address is one peer, but an IPv6 host is usually given a
whole /64, so every address of one /64 counts as the same peer (:func:`peer_key`). :class:`Counts`
is a bounded multiset: the number of held slots per key, with a key dropped when its count falls to
zero, so the map never holds more entries than there are slots held (connections open, calls in
flight), whatever keys the peers use.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Hashable
from typing import Final


IPV6_PREFIX: Final = 64
"""IPv6 peers are grouped by this prefix length (one site's usual allocation)."""


def peer_key(host: str) -> str:
    """The address ``host`` counts as for per-peer limits: IPv4 itself, IPv6 its /64.

    An IPv4-mapped IPv6 address (``::ffff:1.2.3.4``) counts as its IPv4 address. Anything that is
    not an IP address (a Unix socket path, ``unknown``) is returned unchanged.
    """
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])  # drop an IPv6 zone (fe80::1%eth0)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped
        if mapped is not None:
            return str(mapped)
        network = ipaddress.IPv6Network((address, IPV6_PREFIX), strict=False)
        return str(network)
    return str(address)


class Counts:
    """Slots held per key, at most ``limit`` per key; 0 means unlimited (only counted).

    Keys whose count drops to zero are forgotten, so ``len(self)`` never exceeds the number of
    slots held.

    Raises:
        ValueError: ``limit`` is negative.
    """

    __slots__ = ("_counts", "limit")

    def __init__(self, limit: int) -> None:
        if limit < 0:
            message = "limit must be 0 (unlimited) or more"
            raise ValueError(message)
        self.limit = limit
        """Slots one key may hold; 0 for no limit."""
        self._counts: dict[Hashable, int] = {}

    def __len__(self) -> int:
        return len(self._counts)

    def held(self, key: Hashable) -> int:
        """How many slots ``key`` holds."""
        return self._counts.get(key, 0)

    def try_acquire(self, key: Hashable) -> bool:
        """Take one slot for ``key``; ``False`` (nothing taken) when it already holds ``limit``."""
        held = self._counts.get(key, 0)
        if self.limit and held >= self.limit:
            return False
        self._counts[key] = held + 1
        return True

    def release(self, key: Hashable) -> None:
        """Give back one slot of ``key`` (a key holding none is ignored)."""
        held = self._counts.get(key, 0)
        if held <= 1:
            self._counts.pop(key, None)
        else:
            self._counts[key] = held - 1
