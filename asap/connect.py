"""The composition root: a URL becomes a Channel of the right transport, and a Client.

``grpc://`` and ``grpcs://`` select gRPC; ``ws://`` and ``wss://`` the WebSocket bridge. This is the
only module that names both transports.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from urllib.parse import urlsplit

from asap.client import Client, RetryPolicy, TokenSource
from asap.errors import InsecureTransportError
from asap.fallback import FallbackChannel
from asap.interceptors import ClientInterceptor
from asap.protocol.frames import SUBPROTOCOL_PROTO
from asap.tls import ClientTLS, check_plaintext_allowed
from asap.transports.base import Channel


_log = logging.getLogger("asap.client")

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
    secure = scheme in ("grpcs", "wss")
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
    interceptors: Sequence[ClientInterceptor] = (),
) -> Client:
    """Return a :class:`~asap.client.Client` for the agent at ``url`` (see :func:`open_channel`)."""
    channel = open_channel(url, tls=tls, allow_insecure=allow_insecure, subprotocol=subprotocol)
    return Client(
        channel,
        sender=sender,
        token=token,
        timeout=timeout,
        retry=retry,
        interceptors=interceptors,
    )


DEFAULT_PREFERENCE = ("grpcs", "wss", "grpc", "ws")
"""The default order in which :func:`discover` prefers an agent's endpoints, by URL scheme."""


def rank_endpoints(
    urls: Sequence[str], prefer: Sequence[str] = DEFAULT_PREFERENCE, *, allow_insecure: bool = False
) -> list[str]:
    """Order endpoint URLs by scheme preference, dropping schemes not in ``prefer``.

    Plaintext endpoints that :func:`open_channel` would refuse (a remote host without
    ``allow_insecure``) are dropped too, with a log line, so fallback never picks one.
    """
    ranked: list[tuple[int, int, str]] = []
    for position, url in enumerate(urls):
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in prefer:
            continue
        if scheme not in ("grpcs", "wss"):
            try:
                check_plaintext_allowed(url, parts.hostname or "", allow_insecure=allow_insecure)
            except InsecureTransportError as error:
                _log.warning("skipping endpoint %s: %s", url, error)
                continue
        ranked.append((prefer.index(scheme), position, url))
    return [url for _, _, url in sorted(ranked)]


def url_host(url: str) -> str:
    """The host of ``url`` as credentials are scoped to it: lowercase, without a trailing dot."""
    return (urlsplit(url).hostname or "").rstrip(".").lower()


def same_host_endpoints(
    url: str,
    endpoints: Sequence[str],
    *,
    allow_credentials_to: Iterable[str] = (),
    trust_manifest_hosts: bool = False,
) -> list[str]:
    """Keep the endpoints on the host of ``url`` (or on a host the caller allowed), in order.

    The host must match exactly (no DNS resolution: ``localhost``, ``127.0.0.1`` and
    ``127.0.0.2`` are three hosts); scheme and port may differ, since one agent serves several
    transports on several ports. Each endpoint left out is logged at WARNING with its host.
    """
    if trust_manifest_hosts:
        return list(endpoints)
    allowed = {url_host(url)} | {host.rstrip(".").lower() for host in allow_credentials_to}
    kept: list[str] = []
    for endpoint in endpoints:
        host = url_host(endpoint)
        if host in allowed:
            kept.append(endpoint)
            continue
        _log.warning(
            "skipping endpoint %s: its host %r is not %r, which the caller named; pass "
            "allow_credentials_to=[%r] to discover() to send credentials there",
            endpoint,
            host,
            url_host(url),
            host,
        )
    return kept


async def discover(
    url: str,
    *,
    prefer: Sequence[str] = DEFAULT_PREFERENCE,
    sender: str = "",
    token: TokenSource | None = None,
    timeout: float | None = 30.0,
    tls: ClientTLS | None = None,
    allow_insecure: bool = False,
    subprotocol: str = SUBPROTOCOL_PROTO,
    retry: RetryPolicy | None = None,
    cooldown: float = 30.0,
    interceptors: Sequence[ClientInterceptor] = (),
    allow_credentials_to: Iterable[str] = (),
    trust_manifest_hosts: bool = False,
) -> Client:
    """Learn every endpoint of the agent at ``url`` and return a Client that falls back between them.

    Calls GetManifest at ``url``, orders the manifest's endpoints by ``prefer`` (``url`` itself comes
    last if the manifest does not list it), and returns a Client over a
    :class:`~asap.fallback.FallbackChannel`: calls use the best endpoint that works, and move to
    the next one at run time when a transport becomes unreachable.

    Credentials (``token``, what ``interceptors`` add, a client certificate in ``tls``) go only
    to the host of ``url``: manifest endpoints on another host are skipped, with a warning naming
    the host, unless that host is in ``allow_credentials_to`` or ``trust_manifest_hosts`` is
    true (see :func:`same_host_endpoints`).

    Raises:
        AsapError: GetManifest failed at ``url``.
    """
    bootstrap = Client(
        open_channel(url, tls=tls, allow_insecure=allow_insecure, subprotocol=subprotocol),
        token=token,
        timeout=timeout,
        retry=retry,
    )
    async with bootstrap:
        manifest = await bootstrap.get_manifest()
    advertised = same_host_endpoints(
        url,
        [endpoint.url for endpoint in manifest.endpoints],
        allow_credentials_to=allow_credentials_to,
        trust_manifest_hosts=trust_manifest_hosts,
    )
    urls = rank_endpoints(advertised, prefer, allow_insecure=allow_insecure)
    if url not in urls:
        urls.append(url)
    _log.info("discovered %s: %s", manifest.id, ", ".join(urls))

    def factory(endpoint_url: str) -> Channel:
        return open_channel(
            endpoint_url, tls=tls, allow_insecure=allow_insecure, subprotocol=subprotocol
        )

    channel = FallbackChannel(urls, factory, cooldown=cooldown)
    return Client(
        channel,
        sender=sender,
        token=token,
        timeout=timeout,
        retry=retry,
        interceptors=interceptors,
    )
