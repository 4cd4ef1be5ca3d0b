"""The composition root: a URL becomes a Channel of the right transport, and a Client.

``grpc://`` and ``grpcs://`` select gRPC; ``ws://`` and ``wss://`` the WebSocket bridge. This is the
only module that names both transports.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from asap.client import Client, RetryPolicy, TokenSource
from asap.protocol.frames import SUBPROTOCOL_PROTO
from asap.tls import ClientTLS
from asap.transports.base import Channel


SCHEMES = ("grpc", "grpcs", "ws", "wss")
"""The URL schemes :func:`open_channel` understands."""


def open_channel(
    url: str,
    *,
    tls: ClientTLS | None = None,
    allow_insecure: bool = False,
    subprotocol: str = SUBPROTOCOL_PROTO,
) -> Channel:
    """Open a channel for ``url``.

    Plaintext schemes (``grpc://``, ``ws://``) to a host that is not loopback are refused unless
    ``allow_insecure`` is true; TLS schemes use ``tls`` or the system trust store.

    Raises:
        ValueError: unknown scheme or missing host/port.
        InsecureTransportError: plaintext to a remote host without ``allow_insecure``.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        message = (
            f"unsupported URL scheme {parts.scheme!r} in {url!r}; use one of {', '.join(SCHEMES)}"
        )
        raise ValueError(message)
    host = parts.hostname
    if not host:
        message = f"no host in {url!r}"
        raise ValueError(message)
    secure = scheme.endswith("s")
    if scheme.startswith("grpc"):
        from asap.transports.grpc.client import GrpcChannel

        port = parts.port or (443 if secure else 50051)
        return GrpcChannel(
            host,
            port,
            tls=(tls or ClientTLS()) if secure else None,
            allow_insecure=allow_insecure,
        )
    from asap.transports.ws.client import WebSocketChannel

    return WebSocketChannel(
        url,
        tls=(tls or ClientTLS()) if secure else None,
        allow_insecure=allow_insecure,
        subprotocol=subprotocol,
    )


def connect(
    url: str,
    *,
    sender: str = "",
    token: TokenSource | None = None,
    timeout: float | None = 30.0,
    tls: ClientTLS | None = None,
    allow_insecure: bool = False,
    subprotocol: str = SUBPROTOCOL_PROTO,
    retry: RetryPolicy | None = None,
) -> Client:
    """Return a :class:`~asap.client.Client` for the agent at ``url`` (see :func:`open_channel`)."""
    channel = open_channel(url, tls=tls, allow_insecure=allow_insecure, subprotocol=subprotocol)
    return Client(channel, sender=sender, token=token, timeout=timeout, retry=retry)
