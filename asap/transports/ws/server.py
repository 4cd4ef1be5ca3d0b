"""WebSocketServerTransport: the WebSocket bridge (bridge.proto) in front of the core's Dispatcher.

Theory of operation. An asyncio server accepts TCP (or TLS) connections; each one is a
:class:`~asap.transports.ws.server_connection.ServerBridgeConnection`, an ``asyncio.BufferedProtocol`` over
websockets' sans-I/O server protocol (:mod:`asap.transports.ws.pump`). The opening handshake is
checked by :mod:`asap.transports.ws.handshake` before anything else runs; plain HTTP probes go to
:mod:`asap.transports.ws.http_endpoints`. This module owns only the listener: binding, the
registry of connections and its limit, heartbeat periods, draining and stopping.

Close codes (bridge.proto "Close codes"; each has a test in ``tests/transports/ws``):

====  ===============================================================================
1000  the client closed the connection
1001  the server stopped: GoAway when the server starts draining (its health turns to not
      serving), in-flight calls finish (up to the grace period), then the close; or the
      connection had no call open for :attr:`Limits.connection_idle_timeout` (GoAway first)
1002  a frame that cannot be attributed to a stream, or a text message on a binary subprotocol
1007  text that is not JSON on a JSON subprotocol, or not UTF-8
1008  :attr:`Limits.rate_limit_strikes_before_close` calls in a row refused for the rate limit
      or for their credentials
1009  a WebSocket message over :attr:`Limits.max_frame_bytes` (websockets' ``max_size``)
1011  no pong within :attr:`Limits.heartbeat_timeout` of a ping
1013  :attr:`Limits.max_connections` connections already open, or
      :attr:`Limits.max_connections_per_peer` from the peer's address (IPv6: its /64): the
      handshake completes and the connection is closed at once with 1013, so clients see the
      bridge's code rather than an HTTP error and retry later
====  ===============================================================================
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from ssl import SSLContext, SSLObject

from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

from asap.core import probes
from asap.core.certificates import certificate_identity
from asap.core.context import Identity
from asap.core.dispatch import Dispatcher
from asap.core.health import HealthState
from asap.core.middleware import BearerAuth
from asap.errors import InvalidState
from asap.protocol.admission import Counts
from asap.protocol.frames import SUBPROTOCOLS, CloseCode
from asap.protocol.limits import Limits
from asap.protocol.proxies import TrustedProxies
from asap.tls import ServerTLS, certificate_from_ssl
from asap.transports.base import TLSListener, listener_url
from asap.transports.ws.handshake import HandshakePolicy, HttpEndpoint, select_subprotocol
from asap.transports.ws.http_endpoints import HEALTH_PATH, health_endpoint
from asap.transports.ws.protocol_logger import SERVER_LOGGER
from asap.transports.ws.server_connection import GOAWAY_REASON, TRANSPORT, ServerBridgeConnection
from asap.v1 import manifest_pb2


_log = logging.getLogger("asap.server")

__all__ = ["GOAWAY_REASON", "HEALTH_PATH", "HEARTBEAT_JITTER", "WebSocketServerTransport"]

HEARTBEAT_JITTER = 0.2
"""Each connection's heartbeat period is ``heartbeat_interval`` times a random factor in 1 +- this."""
_JITTER = random.Random()  # noqa: S311 - spreading timers, not cryptography


class WebSocketServerTransport(TLSListener):
    """Serves AgentService over the WebSocket bridge on one address and path.

    Args:
        dispatcher: Runs every call.
        health: The serving state: when it turns to not serving (the server has begun to drain)
            every connection, and each one opened later, gets GoAway; their new calls are refused
            with SHUTTING_DOWN while the calls in flight finish.
        host: The address to bind (an IP address or a host name).
        port: The port; 0 picks a free one (``endpoint`` shows the real one after start).
        limits: Frame and message sizes, streams per connection, stream windows, connections,
            handshake timeout, heartbeats and rate-limit strikes.
        tls: Certificate and key (``wss://``); with ``client_ca`` clients must present a
            certificate (mTLS). None serves plaintext ``ws://``.
        path: The URL path of the bridge; other paths are answered with HTTP 404.
        allowed_origins: Origins a browser may connect from (exact ``scheme://host[:port]``);
            another Origin is refused with HTTP 403. A handshake without an Origin header (not a
            browser, so not a cross-site request) is accepted. None (the default) refuses every
            handshake that carries an Origin: serve browser clients with their origins listed.
        http_endpoints: Further plain HTTP GET endpoints by path (``/metrics``), beside
            ``/healthz``.
        subprotocols: The subprotocols accepted (all of :data:`SUBPROTOCOLS` by default); a
            handshake offering none of them is refused with HTTP 400. Leaving out the JSON ones
            turns off the costlier decoder for peers that do not need it.
        trusted_proxies: Peers whose handshake's ``X-Forwarded-For`` header names the client
            (the peer calls see); from any other peer it is ignored.
        handshake_auth: Verify the handshake's credentials with this guard before the upgrade
            (HTTP 401 when they do not verify; :mod:`asap.transports.ws.handshake_auth`). None
            lets every handshake through and leaves authentication to each call.
        handshake_charge: Charges an anonymous principal (``peer:<address>``) one rate-limit
            token for each refused handshake; past its limit the refusal is HTTP 429.
    """

    reuse_port: bool = False
    """wt-redis: bind with SO_REUSEPORT (set by Server.add_websocket for ``asap serve --workers``)."""

    _name = "this WebSocket"

    def __init__(
        self,
        dispatcher: Dispatcher,
        health: HealthState,
        *,
        host: str,
        port: int,
        limits: Limits,
        tls: ServerTLS | None,
        path: str,
        allowed_origins: Sequence[str] | None,
        http_endpoints: Mapping[str, HttpEndpoint] | None = None,
        subprotocols: Sequence[str] = SUBPROTOCOLS,
        trusted_proxies: TrustedProxies | None = None,
        handshake_auth: BearerAuth | None = None,
        handshake_charge: Callable[[str], Awaitable[float]] | None = None,
    ) -> None:
        if not path.startswith("/"):
            message = f"path must start with '/', got {path!r}"
            raise ValueError(message)
        unknown = [name for name in subprotocols if name not in SUBPROTOCOLS]
        if unknown or not subprotocols:
            message = f"subprotocols must be a non-empty subset of {SUBPROTOCOLS}, got {unknown}"
            raise ValueError(message)
        self.subprotocols = tuple(name for name in SUBPROTOCOLS if name in subprotocols)
        """The subprotocols this listener accepts, most preferred first."""
        self.dispatcher = dispatcher
        self.trusted_proxies = trusted_proxies or TrustedProxies(())
        """Peers whose handshake's ``X-Forwarded-For`` names the client the core sees."""
        self.health = health
        self.limits = limits
        self.handshake_auth = handshake_auth
        """Checks every handshake's credentials before the upgrade, when set."""
        self.handshake_charge = handshake_charge
        """Charges a refused handshake to the peer's rate limit, when set."""
        self.policy = HandshakePolicy(
            path=path,
            allowed_origins=None if allowed_origins is None else frozenset(allowed_origins),
            endpoints={HEALTH_PATH: health_endpoint(health), **(http_endpoints or {})},
        )
        self._host = host
        self._port = port
        self._tls = tls
        self._ssl: SSLContext | None = None
        """The context new handshakes use (see reload_tls)."""
        self._path = path
        self._server: asyncio.Server | None = None
        self._accepted: set[ServerBridgeConnection] = set()
        """Every connection whose transport is up (handshaking or open)."""
        self._open: set[ServerBridgeConnection] = set()
        """Connections past the handshake that hold a slot of ``max_connections``."""
        self._per_peer = Counts(limits.max_connections_per_peer)
        """Slots of ``_open`` by peer (:func:`~asap.protocol.admission.peer_key`)."""
        self._ended: set[ServerBridgeConnection] = set()
        """Connections that ended while handlers of theirs were still finishing."""
        self._served = False
        self.draining = False
        """Whether GoAway has been sent (new calls are refused with SHUTTING_DOWN)."""
        self.closing = False
        """Whether the transport is stopping (new connections are closed with 1001)."""
        self._stopping: asyncio.Task[None] | None = None

    @property
    def connections(self) -> int:
        """How many bridge connections are open."""
        return len(self._open)

    def connections_from(self, key: str) -> int:
        """How many bridge connections are open from one peer (a ``peer_key``)."""
        return self._per_peer.held(key)

    @property
    def peers(self) -> int:
        """How many peers have a bridge connection open (the per-peer map's size)."""
        return len(self._per_peer)

    def open_connections(self) -> list[ServerBridgeConnection]:
        """The bridge connections now open (for tests and diagnostics)."""
        return list(self._open)

    # -- registry (called by connections) -------------------------------------------------

    def connection_made(self, conn: ServerBridgeConnection) -> None:
        """A TCP connection arrived (its handshake has not run yet)."""
        self._accepted.add(conn)

    def bridge_opened(self, conn: ServerBridgeConnection) -> str | None:
        """A handshake completed: take a slot, or say why there is none (the 1013 reason)."""
        if len(self._open) >= self.limits.max_connections:
            return "connection limit reached"
        if not self._per_peer.try_acquire(conn.peer_key):
            return "too many connections from this address"
        self._open.add(conn)
        probes.connection_opened(TRANSPORT)
        return None

    def connection_lost(self, conn: ServerBridgeConnection) -> None:
        """A connection ended; handlers of its still finishing are awaited at stop."""
        self._accepted.discard(conn)
        was_open = conn in self._open
        if was_open:
            self._open.discard(conn)
            self._per_peer.release(conn.peer_key)
        if conn.session is not None:  # past the handshake (also one refused with 1013 or 1001)
            probes.connection_closed(TRANSPORT, conn.close_code, was_open=was_open)
        # Handlers were cancelled and end within a loop turn or two: keep only those still going.
        self._ended = {ended for ended in self._ended if len(ended.tasks)}
        if len(conn.tasks):
            self._ended.add(conn)

    def heartbeat_period(self) -> float:
        """A jittered heartbeat period, so connections opened together do not ping in phase."""
        factor = _JITTER.uniform(1 - HEARTBEAT_JITTER, 1 + HEARTBEAT_JITTER)
        return self.limits.heartbeat_interval * factor

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Bind and start serving.

        Raises:
            InvalidState: The transport was already started or stopped.
            OSError: The address cannot be bound.
        """
        if self._server is not None or self._stopping is not None:
            message = "the WebSocket transport was already started"
            raise InvalidState(message)
        loop = asyncio.get_running_loop()
        ssl = None
        if self._tls is not None:
            ssl = self._ssl = self._tls.ssl_context()
            # Every handshake asks for the current context (reload_tls replaces it); the callback
            # runs without SNI too (server_name None), so a client dialling an IP is served alike.
            ssl.sni_callback = self._current_context
        self._server = await loop.create_server(
            self._new_connection,
            self._host,
            self._port,
            ssl=ssl,
            ssl_handshake_timeout=None if ssl is None else self.limits.handshake_timeout,
            reuse_port=self.reuse_port or None,  # asap serve --workers shares the port
        )
        self._port = self._server.sockets[0].getsockname()[1]
        self.health.subscribe(self._on_health)

    def _current_context(
        self, ssl_object: SSLObject, _server_name: str | None, initial: SSLContext
    ) -> None:
        current = self._ssl
        if current is not None and current is not initial:
            ssl_object.context = current

    def _apply_tls(self, current: ServerTLS, tls: ServerTLS) -> None:
        self._ssl = current.check_reload(tls)

    def client_identity(self, transport: asyncio.BaseTransport) -> Identity | None:
        """The identity of the connection's verified client certificate (mTLS), or None."""
        tls = self._tls
        ssl_object = transport.get_extra_info("ssl_object")
        if tls is None or tls.client_ca is None or not isinstance(ssl_object, SSLObject):
            return None
        certificate = certificate_from_ssl(
            ssl_object.getpeercert(), ssl_object.getpeercert(binary_form=True)
        )
        if certificate is None:
            return None
        return certificate_identity(tls.client_identity(certificate))

    def _new_connection(self) -> ServerBridgeConnection:
        ws = ServerProtocol(
            subprotocols=[Subprotocol(name) for name in self.subprotocols],
            select_subprotocol=select_subprotocol,
            max_size=self.limits.max_frame_bytes,
            logger=SERVER_LOGGER,
        )
        return ServerBridgeConnection(self, ws)

    @property
    def endpoint(self) -> manifest_pb2.Endpoint:
        """``ws://host:port/path`` (or ``wss://``) with the bound port.

        Raises:
            InvalidState: Before :meth:`start`.
        """
        if self._server is None:
            message = "the WebSocket transport has not been started"
            raise InvalidState(message)
        scheme = "ws" if self._tls is None else "wss"
        return manifest_pb2.Endpoint(
            transport=manifest_pb2.TRANSPORT_WEBSOCKET,
            url=listener_url(scheme, self._host, self._port, self._path),
        )

    def _on_health(self, serving: bool) -> None:
        """Start draining when the server stops serving (its drain begins before stop())."""
        if serving:
            self._served = True
        elif self._served and not self.draining:
            self._drain()

    def _drain(self) -> None:
        """Send GoAway on every connection, and on each one opened from now on."""
        self.draining = True
        for conn in self._open:
            session = conn.session
            if session is not None:
                session.send_goaway(GOAWAY_REASON)
                conn.flush()

    async def stop(self, grace: float | None) -> None:
        """Stop accepting, send GoAway, let calls finish for ``grace`` seconds, then close (1001).

        Idempotent; concurrent callers all wait for the same shutdown. When it returns every
        connection is closed and every task the transport started has finished.
        """
        if self._stopping is None:
            self._stopping = asyncio.get_running_loop().create_task(self._stop(grace))
        await asyncio.shield(self._stopping)

    async def _stop(self, grace: float | None) -> None:
        server = self._server
        if server is None:
            return
        if not self.draining:
            self._drain()
        self.closing = True
        server.close()
        connections = list(self._open)
        try:
            async with asyncio.timeout(grace):
                for conn in connections:
                    await conn.idle.wait()
        except TimeoutError:
            _log.info("grace period over; cancelling the calls still running")
        await asyncio.gather(
            *(conn.shutdown(CloseCode.GOING_AWAY, GOAWAY_REASON) for conn in connections)
        )
        for conn in list(self._accepted):  # handshakes still in progress
            conn.abort()
            await conn.wait_closed()
        for conn in [*self._ended, *connections]:
            await conn.finish()
        self._ended.clear()
        await server.wait_closed()
