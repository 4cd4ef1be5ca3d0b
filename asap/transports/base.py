"""The contracts every transport implements: a client :class:`Channel` and a :class:`ServerTransport`.

A transport only moves messages, metadata and statuses. Semantics (validation, dedupe, acks,
middleware, deadlines, error mapping) live in :mod:`asap.core` on the server and in
:mod:`asap.client` on the client, so they are identical on every transport by construction.
"""

from __future__ import annotations

import abc
import socket
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Final

from google.protobuf.message import Message

from asap._typing import Metadata
from asap.core.method import MethodSpec
from asap.errors import InvalidState
from asap.tls import ServerTLS
from asap.v1 import manifest_pb2


@dataclass(frozen=True, slots=True)
class CallOptions:
    """Per-call options."""

    timeout: float | None = None
    """Seconds the caller waits; the server gets the remaining time and enforces it too."""
    metadata: Metadata = ()
    """Request metadata (lowercase keys; ``-bin`` keys carry bytes)."""


@dataclass(slots=True, init=False)
class Reply:
    """A unary response with the trailing metadata the server sent.

    One is made per call, so its ``__init__`` is written out (a frozen dataclass's costs more).
    """

    message: Final[Message]
    trailing_metadata: Final[Metadata]

    def __init__(self, message: Message, trailing_metadata: Metadata = ()) -> None:
        self.message = message
        self.trailing_metadata = trailing_metadata


class ResponseStream(abc.ABC):
    """The responses of a streaming call, as an async iterator.

    Iteration ends when the server ends the call with OK; a failed call raises its
    :class:`~asap.errors.AsapError` from ``__anext__``. ``trailing_metadata`` is available once
    iteration has ended. ``cancel()`` abandons the call (the server's handler is cancelled); it is
    idempotent and safe after the call ended.
    """

    def __aiter__(self) -> AsyncIterator[Message]:
        return self

    @abc.abstractmethod
    async def __anext__(self) -> Message:
        """Return the next response message."""

    @property
    @abc.abstractmethod
    def trailing_metadata(self) -> Metadata:
        """Trailing metadata, once the call has ended (empty before)."""

    @abc.abstractmethod
    async def cancel(self) -> None:
        """Abandon the call."""


class Channel(abc.ABC):
    """The client side of one transport connection to one agent.

    Failed calls raise :class:`~asap.errors.AsapError` subclasses decoded from the wire status
    (:func:`asap.errors.from_status`), with ``trailing_metadata`` set on the error. Methods may be
    called concurrently. ``close()`` is idempotent; after it every call raises
    :class:`~asap.errors.InvalidState`.
    """

    transport: manifest_pb2.Transport.ValueType
    """Which transport this channel speaks."""

    @abc.abstractmethod
    async def unary(self, method: MethodSpec, request: Message, options: CallOptions) -> Reply:
        """Make a unary-request, unary-response call."""

    @abc.abstractmethod
    def open_stream(
        self,
        method: MethodSpec,
        requests: Message | AsyncIterable[Message],
        options: CallOptions,
    ) -> ResponseStream:
        """Start a call whose requests or responses (or both) stream.

        ``requests`` is one message for server-streaming methods, else an async iterable that
        ends to half-close. For client-streaming methods the stream yields the one response.
        """

    @abc.abstractmethod
    async def close(self) -> None:
        """Close the connection; calls in flight fail with UNAVAILABLE."""

    async def __aenter__(self) -> Channel:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class ServerTransport(abc.ABC):
    """One listener of a :class:`~asap.server.Server` that feeds calls to the Dispatcher.

    ``start()`` binds and begins accepting; ``endpoint`` is valid after it. ``stop(grace)`` stops
    accepting at once, lets in-flight calls finish for up to ``grace`` seconds, then cancels them
    and closes every connection; it is idempotent.
    """

    @abc.abstractmethod
    async def start(self) -> None:
        """Bind and start serving."""

    @property
    @abc.abstractmethod
    def endpoint(self) -> manifest_pb2.Endpoint:
        """The endpoint with its real URL (port 0 resolved)."""

    @abc.abstractmethod
    async def stop(self, grace: float | None) -> None:
        """Stop serving, letting in-flight calls finish within ``grace`` seconds."""


class TLSListener(ServerTransport):
    """A listener that may serve TLS and swap its certificate while it serves.

    ``reload_tls`` is the same on both transports: refused on a plaintext listener, else checked
    and applied by the transport (:meth:`_apply_tls`) before it becomes :attr:`tls`.
    """

    _tls: ServerTLS | None
    _name: str = "this"

    @property
    def tls(self) -> ServerTLS | None:
        """What new connections are served with (None: plaintext)."""
        return self._tls

    def reload_tls(self, tls: ServerTLS) -> None:
        """Use ``tls`` for every new connection; connections already open keep theirs.

        Raises:
            InvalidState: The listener serves plaintext.
            ValueError: ``tls`` would turn client certificates on or off, or does not load.
        """
        current = self._tls
        if current is None:
            message = f"{self._name} listener serves plaintext; it has no certificate to reload"
            raise InvalidState(message)
        self._apply_tls(current, tls)
        self._tls = tls

    @abc.abstractmethod
    def _apply_tls(self, current: ServerTLS, tls: ServerTLS) -> None:
        """Check ``tls`` against ``current`` and make new handshakes use it (ValueError: unchanged)."""


WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})  # noqa: S104 - recognising them, not binding
"""Addresses that mean "every interface": a listener on one is advertised by the host's name."""


def listener_url(scheme: str, host: str, port: int, path: str = "") -> str:
    """The URL of a listener, bracketing IPv6 hosts: ``grpc://[::1]:50051``.

    A listener on a wildcard address (``0.0.0.0``, ``::``) is reachable at every address of the
    machine, none of which is the wildcard: its URL names the machine's host name instead (use
    ``Server.advertise()`` / ``asap serve --advertise`` for a name clients resolve differently).
    """
    if host in WILDCARD_HOSTS:
        host = socket.gethostname()
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{port}{path}"
