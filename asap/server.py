"""Server: one agent served on any number of transports through one Dispatcher."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from asap.core.agent import Agent
from asap.core.dedupe import DedupeStore, InMemoryDedupeStore
from asap.core.delivery import Deliverer
from asap.core.dispatch import Dispatcher
from asap.core.health import HealthState
from asap.core.middleware import BearerAuth, Middleware, RateLimit, SenderBinding, TokenVerifier
from asap.core.service import AgentServiceCore
from asap.errors import InvalidState
from asap.protocol.frames import DEFAULT_PATH
from asap.protocol.limits import Limits
from asap.tls import ServerTLS
from asap.transports.base import ServerTransport
from asap.v1 import manifest_pb2
from asap.validation import ValidationPolicy


_log = logging.getLogger("asap.server")


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
        bind_sender: Refuse envelopes whose sender is not the authenticated identity.
        dedupe: Where delivery outcomes are remembered (in memory by default).
        validation: Envelope validation policy (timestamp window).
        middleware: Further guards, run after authentication and rate limiting.
        advertised_urls: URLs to list in the manifest instead of the listeners' own (behind a proxy).
    """

    def __init__(
        self,
        agent: Agent,
        *,
        limits: Limits | None = None,
        auth: TokenVerifier | BearerAuth | None = None,
        bind_sender: bool = False,
        dedupe: DedupeStore | None = None,
        validation: ValidationPolicy | None = None,
        middleware: Sequence[Middleware] = (),
        advertised_urls: Sequence[manifest_pb2.Endpoint] = (),
    ) -> None:
        self.agent = agent
        self.limits = limits or Limits()
        guards: list[Middleware] = []
        if auth is not None:
            guards.append(auth if isinstance(auth, BearerAuth) else BearerAuth(auth))
            agent.auth_schemes = [
                manifest_pb2.AuthScheme(type=manifest_pb2.AUTH_SCHEME_TYPE_BEARER)
            ]
        if self.limits.rate_limit_per_second > 0:
            guards.append(
                RateLimit(self.limits.rate_limit_per_second, self.limits.rate_limit_burst)
            )
        if bind_sender:
            guards.append(SenderBinding())
        guards.extend(middleware)
        self.health = HealthState()
        deliverer = Deliverer(
            agent,
            dedupe if dedupe is not None else InMemoryDedupeStore(),
            guards,
            validation if validation is not None else ValidationPolicy(),
        )
        self.service = AgentServiceCore(deliverer, self.endpoints, limits=self.limits)
        self.dispatcher = Dispatcher(
            self.service, guards, max_concurrent_calls=self.limits.max_concurrent_calls
        )
        self._advertised = list(advertised_urls)
        self._transports: list[ServerTransport] = []
        self._started = False
        self._stopped = asyncio.Event()

    def add_grpc(self, address: str, *, tls: ServerTLS | None = None) -> ServerTransport:
        """Add a gRPC listener on ``HOST:PORT`` (port 0 picks a free port)."""
        from asap.transports.grpc.server import GrpcServerTransport

        host, port = _split_address(address)
        transport = GrpcServerTransport(
            self.dispatcher, self.health, host=host, port=port, limits=self.limits, tls=tls
        )
        return self._add(transport)

    def add_websocket(
        self,
        address: str,
        *,
        tls: ServerTLS | None = None,
        path: str = DEFAULT_PATH,
        allowed_origins: Sequence[str] | None = None,
        subprotocols: Sequence[str] | None = None,
    ) -> ServerTransport:
        """Add a WebSocket bridge listener on ``HOST:PORT`` at ``path``.

        ``subprotocols`` restricts the subprotocols accepted (default: all of them), for example
        ``("asap.v1.1.proto",)`` to turn JSON off.
        """
        from asap.protocol.frames import SUBPROTOCOLS
        from asap.transports.ws.server import WebSocketServerTransport

        host, port = _split_address(address)
        transport = WebSocketServerTransport(
            self.dispatcher,
            self.health,
            host=host,
            port=port,
            limits=self.limits,
            tls=tls,
            path=path,
            allowed_origins=allowed_origins,
            subprotocols=SUBPROTOCOLS if subprotocols is None else subprotocols,
        )
        return self._add(transport)

    def _add(self, transport: ServerTransport) -> ServerTransport:
        if self._started:
            message = "add listeners before start()"
            raise InvalidState(message)
        self._transports.append(transport)
        return transport

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
        # the same UNAVAILABLE (SHUTTING_DOWN) while in-flight calls finish; then the listeners stop.
        self.dispatcher.draining = True
        loop = asyncio.get_running_loop()
        started = loop.time()
        if grace is None:
            await self.dispatcher.wait_idle()
        elif grace > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.dispatcher.wait_idle(), grace)
        remaining = None if grace is None else max(0.0, grace - (loop.time() - started))
        await asyncio.gather(*(transport.stop(remaining) for transport in self._transports))
        self._stopped.set()

    async def wait_stopped(self) -> None:
        """Wait until :meth:`stop` has finished."""
        await self._stopped.wait()

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()
