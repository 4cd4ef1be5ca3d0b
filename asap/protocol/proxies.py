"""Trusted reverse proxies: which address a call comes from when a proxy forwards it.

A proxy in front of a server connects on behalf of its clients and says who they are in
``X-Forwarded-For`` (a WebSocket handshake header; ``x-forwarded-for`` metadata on gRPC). Anyone can
send that header, so it counts only when the direct peer is a trusted proxy, and then only as far
as trusted proxies appended to it: the client is the right-most address that is not itself a
trusted proxy (every trusted hop appends the address it saw; what is left of the first untrusted
one is the client's own, unverifiable claim).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import Final, TypeAlias


Address: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

FORWARDED_FOR: Final = "x-forwarded-for"
"""The header (and gRPC metadata key) a proxy names the client in."""

MAX_HOPS: Final = 32
"""Entries of ``X-Forwarded-For`` examined, from the right; a longer chain stops there."""


class TrustedProxies:
    """The networks whose connections may say, in ``X-Forwarded-For``, who the client is.

    Args:
        networks: CIDRs (``10.0.0.0/8``, ``2001:db8::/32``) or single addresses.

    Raises:
        ValueError: an entry is not an address or a network.
    """

    __slots__ = ("networks",)

    def __init__(self, networks: Iterable[str]) -> None:
        self.networks: tuple[Network, ...] = tuple(
            ipaddress.ip_network(entry.strip(), strict=False) for entry in networks
        )

    def __bool__(self) -> bool:
        return bool(self.networks)

    def trusts(self, address: Address) -> bool:
        """Whether ``address`` is in a trusted network (IPv4-mapped IPv6 counts as IPv4)."""
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)

    def client_of(self, peer: Address | None, forwarded_for: Sequence[str]) -> Address | None:
        """The client a trusted proxy forwarded for, or None to keep the direct peer.

        ``forwarded_for`` is every value of the header, in order (each a comma-separated list).
        None when the peer is not trusted, the header is absent, or the entry that names the client
        is not an address (a proxy that appends garbage is not believed).
        """
        if peer is None or not self.trusts(peer):
            return None
        entries = [item for value in forwarded_for for item in value.split(",")]
        client: Address | None = None
        for entry in reversed(entries[-MAX_HOPS:]):
            address = parse_address(entry)
            if address is None:
                return None
            client = address
            if not self.trusts(address):
                break
        # Every entry trusted: the left-most one examined is as far as the chain can be believed.
        if isinstance(client, ipaddress.IPv6Address) and client.ipv4_mapped is not None:
            return client.ipv4_mapped
        return client


def parse_address(text: str) -> Address | None:
    """Parse one address as ``X-Forwarded-For`` writes it; None for anything else.

    Accepted: ``1.2.3.4``, ``1.2.3.4:5``, ``2001:db8::1``, ``[2001:db8::1]`` and ``[2001:db8::1]:5``.
    """
    text = text.strip()
    if text.startswith("["):
        end = text.find("]")
        text = text[1:end] if end > 0 else ""
    elif text.count(":") == 1:  # IPv4 with a port
        text = text.split(":", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def parse_peer(peer: str) -> Address | None:
    """Parse the address of a peer string in gRPC's notation; None for anything else.

    Accepted: ``ipv4:1.2.3.4:5``, ``ipv6:[::1]:5`` (the brackets percent-encoded too), no port.
    """
    for prefix in ("ipv4:", "ipv6:"):
        if peer.startswith(prefix):
            return parse_address(peer[len(prefix) :].replace("%5B", "[").replace("%5D", "]"))
    return None


def peer_string(address: Address) -> str:
    """An address in gRPC's peer notation, without a port (a forwarded client has none we know)."""
    if isinstance(address, ipaddress.IPv6Address):
        return f"ipv6:[{address}]"
    return f"ipv4:{address}"
