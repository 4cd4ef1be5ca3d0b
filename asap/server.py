"""Server: one agent served on any number of transports through one Dispatcher."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from asap.core.access_log import AccessLog
from asap.core.agent import Agent
from asap.core.certificates import CertificateBinding, CertificateSenderBinding
from asap.core.dedupe import DedupeStore, InMemoryDedupeStore
from asap.core.delivery import Deliverer
from asap.core.dispatch import Dispatcher
from asap.core.health import HealthState
from asap.core.interceptors import Interceptor, envelope_guards
from asap.core.middleware import (
    BearerAuth,
    RateLimit,
    SenderBinding,
    SharedBuckets,
    TokenVerifier,
)
from asap.core.service import AgentServiceCore
from asap.errors import InvalidState
from asap.protocol.frames import DEFAULT_PATH
from asap.protocol.limits import Limits
from asap.protocol.proxies import TrustedProxies
from asap.tls import ServerTLS
from asap.transports.base import ServerTransport
from asap.v1 import manifest_pb2
from asap.validation import ValidationPolicy


_log = logging.getLogger("asap.server")


class MetricsExporter(Protocol):
    """What a Server needs of its metrics (:class:`asap.observability.metrics.PrometheusMetrics`).

    The server adds :attr:`interceptor` to its chain, calls :meth:`attach` when it starts and
    :meth:`detach` when it stops, serves :meth:`exposition` at ``GET /metrics`` on every bridge
    listener, and with ``metrics_address`` also on a port of its own (:meth:`serve_http`).
    """

    @property
    def interceptor(self) -> Interceptor:
        """Counts every call the server runs."""
        ...

    def attach(self) -> None:
        """Start listening to the probes (connections, flow control, dedupe, rate limits)."""
        ...

    def detach(self) -> None:
        """Stop listening to the probes."""
        ...

    def exposition(self) -> tuple[bytes, str]:
        """The current metrics and their Content-Type."""
        ...

    async def serve_http(self, host: str, port: int) -> int:
        """Serve ``GET /metrics`` on ``host:port`` (0 picks a port); returns the bound port."""
        ...

    async def stop_http(self) -> None:
        """Stop what :meth:`serve_http` started (idempotent)."""
        ...


@runtime_checkable
class ReloadableTLS(Protocol):
    """A listener whose TLS certificate can be replaced while it serves (both transports)."""

    @property
    def tls(self) -> ServerTLS | None:
        """What the listener serves new connections with (None: plaintext)."""
        ...

    def reload_tls(self, tls: ServerTLS) -> None:
        """Serve new connections with ``tls``."""
        ...


def _split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        message = f"address must be HOST:PORT, got {address!r}"
        raise ValueError(message)
    return host.strip("[]") or "127.0.0.1", int(port)


class Server:
    """Serves one :class:`~asap.core.agent.Agent` over gRPC and/or the WebSocket bridge.

    Every listener feeds the same Dispatcher, middleware and delivery store, so a call behaves the
    same whichever transport carries it. Use as ``async with Server(agent) as server`` or call
    :meth:`start` and :meth:`stop`.

    Args:
        agent: The handlers.
        limits: Size, rate, concurrency and liveness limits (secure defaults).
        auth: A token verifier or a BearerAuth; None serves without authentication.
        bind_sender: Refuse envelopes whose sender is not the authenticated identity. None (the
            default) binds every identity when ``auth`` is set, and otherwise the client
            certificate identities that are agent URNs (``ServerTLS(client_ca=...)``; a DNS name
            or CN can never be a sender); True binds every identity, certificates included; False
            turns it off (the dedupe key still includes the authenticated principal, so callers
            never share outcomes).
        dedupe: Where delivery outcomes are remembered (in memory by default; a
            :class:`~asap.stores.redis.RedisDedupeStore` shares them between replicas).
        validation: Envelope validation policy (timestamp window).
        middleware: Further interceptors, run after authentication, rate limiting and sender
            binding (guards that need the identity).
        rate_buckets: Where rate-limit buckets are kept when ``limits`` sets a rate: None keeps
            them in this process; a :class:`~asap.stores.redis.RedisRateLimiter` shares them
            between replicas (the same RetryInfo either way).
        advertised_urls: URLs to list in the manifest instead of the listeners' own (behind a proxy).
        interceptors: Interceptors run around every call before everything else (the first
            outermost), so they also see calls that authentication or a limit refuses: tracing,
            custom metrics, logging (:mod:`asap.core.interceptors`).
        metrics: Count calls, connections, flow-control stalls, dedupe and rate limiting, and serve
            them at ``GET /metrics`` on every bridge listener (``asap-protocol[prometheus]``).
        metrics_address: Also serve ``GET /metrics`` on this ``HOST:PORT`` (for gRPC-only servers).
        access_log: Log one line per call to the ``asap.access`` logger (never credentials).
        reflection: Serve grpc server reflection on gRPC listeners. None (the default) serves it
            only when ``auth`` is not set, since reflection itself takes no credentials.
        trusted_proxies: CIDRs of reverse proxies (``["10.0.0.0/8"]``). A call whose direct peer
            is in one has as its peer (``ctx.peer``: anonymous rate-limit principals, logs) the
            right-most ``X-Forwarded-For`` address that is not itself a trusted proxy (the
            bridge's handshake header, gRPC's ``x-forwarded-for`` metadata); from any other peer
            the header is ignored. Empty (the default): the direct peer, always.
    """

    def __init__(
        self,
        agent: Agent,
        *,
        limits: Limits | None = None,
        auth: TokenVerifier | BearerAuth | None = None,
        bind_sender: bool | None = None,
        dedupe: DedupeStore | None = None,
        validation: ValidationPolicy | None = None,
        middleware: Sequence[Interceptor] = (),
        advertised_urls: Sequence[manifest_pb2.Endpoint] = (),
        rate_buckets: SharedBuckets | None = None,
        interceptors: Sequence[Interceptor] = (),
        metrics: MetricsExporter | None = None,
        metrics_address: str | None = None,
        access_log: bool = False,
        reflection: bool | None = None,
        trusted_proxies: Sequence[str] = (),
    ) -> None:
        self.agent = agent
        self.trusted_proxies = TrustedProxies(trusted_proxies)
        """Networks whose connections may name the client in ``X-Forwarded-For``."""
        # Reflection lists every service and type; it takes no credentials, so a server that
        # requires them does not offer it unless asked to.
        self.reflection = auth is None if reflection is None else reflection
        self.limits = limits or Limits()
        if metrics_address is not None and metrics is None:
            message = "metrics_address needs metrics="
            raise ValueError(message)
        self.metrics = metrics
        self._metrics_address = None if metrics_address is None else _split_address(metrics_address)
        self.metrics_port: int | None = None
        """The port of ``metrics_address`` once started."""
        chain: list[Interceptor] = list(interceptors)
        if metrics is not None:
            chain.append(metrics.interceptor)
        if access_log:
            chain.append(AccessLog())
        guards: list[Interceptor] = []
        rate_limit = None
        if self.limits.rate_limit_per_second > 0:
            rate_limit = RateLimit(
                self.limits.rate_limit_per_second,
                self.limits.rate_limit_burst,
                shared=rate_buckets,
                max_principals=self.limits.rate_limit_max_principals,
                max_anonymous=self.limits.rate_limit_max_anonymous,
            )
        self._rate_limit = rate_limit
        self.auth: BearerAuth | None = None
        """The authentication guard (also checks bridge handshakes), or None."""
        if auth is not None:
            guard = auth if isinstance(auth, BearerAuth) else BearerAuth(auth)
            if rate_limit is not None:
                # Failed attempts cost a token too, so tokens cannot be guessed at line rate.
                guard = guard.charging(rate_limit.charge_failure)
                guard.eager_safe = guard.eager_safe and rate_limit.eager_safe
            self.auth = guard
            guards.append(guard)
            # With a client certificate too, the token must name the certificate's subject.
            guards.append(CertificateBinding())
            agent.auth_schemes = [
                manifest_pb2.AuthScheme(type=manifest_pb2.AUTH_SCHEME_TYPE_BEARER)
            ]
        if rate_limit is not None:
            guards.append(rate_limit)
        if bind_sender or (bind_sender is None and auth is not None):
            guards.append(SenderBinding())  # every authenticated caller, certificates included
        elif bind_sender is None:
            guards.append(CertificateSenderBinding())  # certificates that name an agent URN
        guards.extend(middleware)
        chain.extend(guards)
        self.health = HealthState(max_watchers=self.limits.max_health_watchers)
        self.deliverer = deliverer = Deliverer(
            agent,
            dedupe if dedupe is not None else InMemoryDedupeStore(),
            envelope_guards(chain),
            validation if validation is not None else ValidationPolicy(),
        )
        self.service = AgentServiceCore(deliverer, self.endpoints, limits=self.limits)
        self.dispatcher = Dispatcher(
            self.service,
            chain,
            max_concurrent_calls=self.limits.max_concurrent_calls,
            max_calls_per_principal=self.limits.max_calls_per_principal,
        )
        self._advertised = list(advertised_urls)
        self._transports: list[ServerTransport] = []
        self._goaway_at_start: list[ServerTransport] = []
        """Listeners whose stop(grace) tells clients at once (gRPC's GOAWAY): stopped first."""
        self._started = False
        self._stopped = asyncio.Event()

    def add_grpc(
        self, address: str, *, tls: ServerTLS | None = None, reuse_port: bool = False
    ) -> ServerTransport:
        """Add a gRPC listener on ``HOST:PORT`` (port 0 picks a free port).

        With ``reuse_port`` the socket is bound with SO_REUSEPORT, so several processes can serve
        the same port (the kernel spreads connections over them).
        """
        from asap.transports.grpc.server import GrpcServerTransport

        host, port = _split_address(address)
        transport = GrpcServerTransport(
            self.dispatcher,
            self.health,
            host=host,
            port=port,
            limits=self.limits,
            tls=tls,
            reuse_port=reuse_port,
            reflection=self.reflection,
            trusted_proxies=self.trusted_proxies,
        )
        self._goaway_at_start.append(transport)
        return self._add(transport)

    def add_websocket(
        self,
        address: str,
        *,
        tls: ServerTLS | None = None,
        path: str = DEFAULT_PATH,
        allowed_origins: Sequence[str] | None = None,
        reuse_port: bool = False,
        subprotocols: Sequence[str] | None = None,
        authenticate_handshake: bool = False,
    ) -> ServerTransport:
        """Add a WebSocket bridge listener on ``HOST:PORT`` at ``path``.

        ``reuse_port`` sets SO_REUSEPORT (``asap serve --workers``). ``subprotocols`` restricts
        the subprotocols accepted (default: all of them), for example ``("asap.v1.1.proto",)`` to
        turn JSON off. ``authenticate_handshake`` (needs ``auth``) refuses a handshake whose
        ``Authorization`` header (or ``access_token``) does not verify with HTTP 401 before the
        upgrade; off by default, since clients may send credentials per call instead (as
        :func:`asap.connect` does).

        Raises:
            ValueError: ``authenticate_handshake`` without ``auth``.
        """
        from asap.protocol.frames import SUBPROTOCOLS
        from asap.transports.ws.http_endpoints import METRICS_PATH, metrics_endpoint
        from asap.transports.ws.server import WebSocketServerTransport

        if authenticate_handshake and self.auth is None:
            message = "authenticate_handshake needs auth="
            raise ValueError(message)
        host, port = _split_address(address)
        endpoints = {}
        if self.metrics is not None:
            endpoints[METRICS_PATH] = metrics_endpoint(self.metrics.exposition)
        transport = WebSocketServerTransport(
            self.dispatcher,
            self.health,
            host=host,
            port=port,
            limits=self.limits,
            tls=tls,
            path=path,
            allowed_origins=allowed_origins,
            http_endpoints=endpoints,
            subprotocols=SUBPROTOCOLS if subprotocols is None else subprotocols,
            trusted_proxies=self.trusted_proxies,
            handshake_auth=self.auth if authenticate_handshake else None,
            handshake_charge=None
            if self._rate_limit is None
            else self._rate_limit.charge_anonymous,
        )
        transport.reuse_port = reuse_port
        return self._add(transport)

    def _add(self, transport: ServerTransport) -> ServerTransport:
        if self._started:
            message = "add listeners before start()"
            raise InvalidState(message)
        self._transports.append(transport)
        return transport

    def reload_tls(self, tls: ServerTLS, *, listener: ServerTransport | None = None) -> None:
        """Serve new connections with ``tls`` (a renewed certificate), without a restart.

        Applies to every TLS listener, or only to ``listener``. Connections already open keep
        going with the certificate they were opened with; every later handshake, on either
        transport, uses the new one. ``tls`` may change the certificate, its key and the client
        CA bundle, but not whether client certificates are required.

        Raises:
            InvalidState: No TLS listener (or ``listener`` serves plaintext).
            ValueError: ``tls`` would turn client certificates on or off, or does not load.
        """
        targets = [
            each
            for each in self._transports
            if isinstance(each, ReloadableTLS) and each.tls is not None
            if listener is None or each is listener
        ]
        if not targets:
            message = "no TLS listener to reload"
            raise InvalidState(message)
        for target in targets:
            current = target.tls
            if current is not None:
                current.check_reload(tls)  # every listener checked before any changes
        for target in targets:
            target.reload_tls(tls)

    def advertise(self, endpoints: Sequence[manifest_pb2.Endpoint]) -> None:
        """List these endpoints in the manifest instead of the listeners' own.

        Use it for the public URLs of a proxy in front of the server; an empty sequence restores
        the listeners' own URLs.
        """
        self._advertised = list(endpoints)

    def endpoints(self) -> list[manifest_pb2.Endpoint]:
        """The endpoints the manifest lists: the advertised ones, else every listener's."""
        if self._advertised:
            return list(self._advertised)
        return [transport.endpoint for transport in self._transports if self._started]

    async def start(self) -> None:
        """Start every listener."""
        if self._started:
            message = "server already started"
            raise InvalidState(message)
        if not self._transports:
            message = "add at least one listener (add_grpc / add_websocket) before start()"
            raise InvalidState(message)
        self._started = True
        try:
            if self.metrics is not None:
                self.metrics.attach()
                if self._metrics_address is not None:
                    self.metrics_port = await self.metrics.serve_http(*self._metrics_address)
            for transport in self._transports:
                await transport.start()
        except BaseException:
            await self.stop(0)
            raise
        self.health.set_serving(True)
        for endpoint in self.endpoints():
            _log.info("listening %s", endpoint.url)

    async def stop(self, grace: float | None = 5.0) -> None:
        """Drain: refuse new calls, let in-flight calls finish within ``grace`` seconds, close.

        Idempotent. Health reports NOT_SERVING from the moment draining starts.
        """
        if self._stopped.is_set():
            return
        self.health.set_serving(False)
        # Draining happens in the Dispatcher first, so a new call on any transport is refused with
        # the same UNAVAILABLE (SHUTTING_DOWN) while in-flight calls finish, and every listener
        # tells its clients at once so they move to a fresh connection or the next endpoint: the
        # bridge sends GoAway as soon as health turns NOT_SERVING, and gRPC's stop(grace), which
        # sends GOAWAY and then waits up to the grace for its calls, starts right away.
        self.dispatcher.draining = True
        loop = asyncio.get_running_loop()
        started = loop.time()
        early = [
            loop.create_task(transport.stop(grace), name="asap.server.goaway")
            for transport in self._transports
            if transport in self._goaway_at_start
        ]
        try:
            if grace is None:
                await self.dispatcher.wait_idle()
            elif grace > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.dispatcher.wait_idle(), grace)
            remaining = None if grace is None else max(0.0, grace - (loop.time() - started))
            await asyncio.gather(
                *(
                    transport.stop(remaining)
                    for transport in self._transports
                    if transport not in self._goaway_at_start
                )
            )
        finally:
            await asyncio.gather(*early)
        # Deliveries that outlived their calls (a connection was cut) finish within the grace too;
        # then they are cancelled (their claims are abandoned, so a retransmission runs them again).
        remaining = None if grace is None else max(0.0, grace - (loop.time() - started))
        try:
            if remaining is None:
                await self.deliverer.wait_idle()
            elif remaining > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.deliverer.wait_idle(), remaining)
            await self.deliverer.close()
        finally:
            if self.metrics is not None:
                await self.metrics.stop_http()
                self.metrics.detach()
        self._stopped.set()

    async def wait_stopped(self) -> None:
        """Wait until :meth:`stop` has finished."""
        await self._stopped.wait()

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()
