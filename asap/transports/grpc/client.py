"""GrpcChannel: the Channel contract over a grpc.aio channel.

One grpc.aio channel (one HTTP/2 connection, re-established by grpc when lost) carries every call.
A multicallable per method is created once, up front, so a unary call is one dictionary lookup and
one grpc call. Failed calls raise the AsapError the server sent (:mod:`.status`).

Cancellation: cancelling the task that awaits a call cancels the RPC (grpc.aio does that) and the
CancelledError propagates. A call cancelled by something other than its own task (``cancel()``, or
``close()`` of the channel) raises :class:`~asap.errors.Cancelled` or
:class:`~asap.errors.ConnectionLost` instead, never a bare CancelledError the task did not ask for.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import Protocol, cast

import grpc
from google.protobuf.message import Message

from asap._typing import Metadata
from asap.core.health import HEALTH_CHECK
from asap.core.method import METHODS, Arity, MethodSpec
from asap.core.tasks import TaskOwner
from asap.errors import AsapError, Cancelled, ConnectionLost, InvalidState
from asap.protocol.limits import DEFAULT_MAX_MESSAGE_BYTES
from asap.tls import ClientTLS, check_plaintext_allowed
from asap.transports.base import CallOptions, Channel, Reply, ResponseStream
from asap.transports.grpc.status import error_from_rpc
from asap.v1 import manifest_pb2


_log = logging.getLogger("asap.client")

MIN_KEEPALIVE_INTERVAL = 1.0
"""The shortest keepalive interval GrpcChannel accepts; ASAP servers accept pings twice as often."""

KEEPALIVE_TIMEOUT_MS = 20_000
"""How long a keepalive ping may go unanswered before the connection is considered dead (grpc's
default)."""

_CLOSED_MESSAGE = "the channel is closed"


def channel_options(max_message_bytes: int, keepalive_interval: float) -> list[tuple[str, int]]:
    """The grpc channel arguments of a GrpcChannel.

    - Message size: ``max_message_bytes`` both ways (grpc's receive default is also 4 MiB, but its
      send default is unlimited; a too large request then fails locally as MessageTooLarge).
    - Keepalive: a ping after ``keepalive_interval`` seconds without activity, also without calls
      and without a cap on pings without data (grpc's default cap of 2 would stop checking a quiet
      long-lived stream, the case keepalive exists for). ASAP servers accept client pings every
      0.5 s (:data:`asap.transports.grpc.server.MIN_PING_INTERVAL_MS`), so they never answer these
      with GOAWAY ``too_many_pings``. A server with grpc's default policy (5 minutes) may; grpc
      then doubles the interval for that connection by itself.
    """
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", round(keepalive_interval * 1000)),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]


def _metadata(metadata: grpc.aio.Metadata | None) -> Metadata:
    return tuple(metadata) if metadata else ()


def _iterator(
    method: MethodSpec, requests: Message | AsyncIterable[Message]
) -> AsyncIterator[Message]:
    if isinstance(requests, Message):
        message = f"{method.name} takes an async iterable of request messages"
        raise TypeError(message)
    return aiter(requests)


StreamingRequestCall = (
    grpc.aio.StreamUnaryCall[Message, Message] | grpc.aio.StreamStreamCall[Message, Message]
)


class _CoreSender(Protocol):
    """The send half of grpc.aio's Cython call (``call._cython_call``)."""

    async def send_serialized_message(self, message: bytes) -> None: ...


def _sender(call: StreamingRequestCall) -> Callable[[Message], Awaitable[None]]:
    """How to write one request on ``call`` such that a refused write does not mask the status.

    grpc.aio's own ``write`` (and its request-iterator consumer, which uses it) turns a write that
    grpc core refuses because the call has just ended into a status of its own, INTERNAL
    "Internal error from Core", which replaces the status the server sent: a caller that was still
    uploading when the server refused its call would see a broken connection instead of the
    refusal. Writing through the call's core object leaves the status alone; where that object is
    not there (another grpc version), the public ``write`` is the fallback.
    """
    core = getattr(call, "_cython_call", None)
    send = getattr(core, "send_serialized_message", None)
    if core is None or not callable(send):
        return call.write
    sender = cast("_CoreSender", core)

    async def write(message: Message) -> None:
        await sender.send_serialized_message(message.SerializeToString())

    return write


class _Upload:
    """Writes a client-streaming call's requests, then half-closes; stops once the call ends.

    As grpc.aio's request-iterator consumer, except that a write refused because the call ended
    leaves the server's status for the caller (see :func:`_sender`), and a request iterator that
    raises ends the call with :attr:`error` (Cancelled, caused by the iterator's exception) for
    the caller instead of a bare CancelledError, as on the bridge.
    """

    __slots__ = ("call", "error", "method", "started")

    def __init__(self, call: StreamingRequestCall, method: MethodSpec) -> None:
        self.call = call
        self.method = method
        self.error: AsapError | None = None
        """Why the upload ended the call (the request iterator failed), else None."""
        self.started = False
        """True once :meth:`run` runs: from then on the iterator has been started, so cancelling
        the upload ends it where it waits and its own cleanup runs (a DuplexStream's releases
        waiting senders), which a generator that never started cannot do."""

    async def run(self, requests: AsyncIterator[Message]) -> None:
        """Write every request, pulling the iterator first (also when the call is already over)."""
        self.started = True
        call = self.call
        write = _sender(call)
        connected = False
        try:
            async for request in requests:
                if call.done():
                    return
                if not connected:  # initial metadata first: grpc core needs that order
                    await call.wait_for_connection()
                    connected = True
                await write(request)
            if not call.done():
                await call.done_writing()
        except (grpc.aio.AioRpcError, grpc.aio.BaseError, asyncio.InvalidStateError):
            return  # the call is over; its status is what the caller reads
        except Exception as exc:  # noqa: BLE001 - the request iterator is the caller's code
            _log.exception("the request iterator of %s failed", self.method.path)
            error = Cancelled("the request iterator failed")
            error.__cause__ = exc
            self.error = error
            call.cancel()
        finally:
            if isinstance(requests, AsyncGenerator):
                # Finish the caller's generator here rather than in the loop's finalizer task.
                await requests.aclose()


class GrpcChannel(Channel):
    """A Channel to one agent over gRPC.

    Args:
        host: The agent's host name or IP address.
        port: The agent's port.
        tls: What to trust and, for mTLS, the client certificate; None means plaintext, which is
            only allowed to loopback addresses unless ``allow_insecure`` is set.
        allow_insecure: Permit plaintext to a host that is not loopback.
        max_message_bytes: Largest message sent or received.
        keepalive_interval: Seconds without activity before a keepalive ping (at least 1).

    Raises:
        InsecureTransportError: Plaintext to a host that is not loopback without
            ``allow_insecure``; nothing is connected.
        ValueError: ``keepalive_interval`` is below :data:`MIN_KEEPALIVE_INTERVAL`.
    """

    transport = manifest_pb2.TRANSPORT_GRPC

    def __init__(
        self,
        host: str,
        port: int,
        *,
        tls: ClientTLS | None = None,
        allow_insecure: bool = False,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        keepalive_interval: float = 30.0,
    ) -> None:
        if not keepalive_interval >= MIN_KEEPALIVE_INTERVAL:
            message = f"keepalive_interval must be at least {MIN_KEEPALIVE_INTERVAL} s"
            raise ValueError(message)
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        options = channel_options(max_message_bytes, keepalive_interval)
        if tls is None:
            self.url = f"grpc://{target}"
            if check_plaintext_allowed(self.url, host, allow_insecure=allow_insecure):
                _log.warning("plaintext gRPC to %s: calls are not encrypted", self.url)
            channel = grpc.aio.insecure_channel(target, options=options)
        else:
            self.url = f"grpcs://{target}"
            credentials = grpc.ssl_channel_credentials(
                # The roots wss:// trusts too: the caller's, else the system store (not grpc's own).
                root_certificates=tls.trusted_roots(),
                private_key=tls.private_key,
                certificate_chain=tls.cert_chain,
            )
            channel = grpc.aio.secure_channel(target, credentials, options=options)
        self._channel = channel
        self._closed = False
        self._uploads = TaskOwner("asap.grpc.upload")
        """The tasks writing client-streaming calls' requests (one per call in flight)."""
        # One multicallable per method, by path; close() empties these so a closed channel fails
        # the lookup instead of paying for a flag check on every call.
        self._unary_unary: dict[str, grpc.aio.UnaryUnaryMultiCallable[Message, Message]] = {}
        self._unary_stream: dict[str, grpc.aio.UnaryStreamMultiCallable[Message, Message]] = {}
        self._stream_unary: dict[str, grpc.aio.StreamUnaryMultiCallable[Message, Message]] = {}
        self._stream_stream: dict[str, grpc.aio.StreamStreamMultiCallable[Message, Message]] = {}
        # _registered_method=True registers the path with grpc core once, as generated stubs do
        # (grpc >= 1.62); the stubs of types-grpcio do not list the argument yet.
        for spec in (*METHODS.values(), HEALTH_CHECK):
            path = spec.path
            serializer = spec.request_type.SerializeToString
            deserializer = spec.response_type.FromString
            if spec.arity is Arity.UNARY_UNARY:
                self._unary_unary[path] = channel.unary_unary(
                    path,
                    serializer,
                    deserializer,
                    _registered_method=True,  # type: ignore[call-arg]
                )
            elif spec.arity is Arity.UNARY_STREAM:
                self._unary_stream[path] = channel.unary_stream(
                    path,
                    serializer,
                    deserializer,
                    _registered_method=True,  # type: ignore[call-arg]
                )
            elif spec.arity is Arity.STREAM_UNARY:
                self._stream_unary[path] = channel.stream_unary(
                    path,
                    serializer,
                    deserializer,
                    _registered_method=True,  # type: ignore[call-arg]
                )
            else:
                self._stream_stream[path] = channel.stream_stream(
                    path,
                    serializer,
                    deserializer,
                    _registered_method=True,  # type: ignore[call-arg]
                )

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    async def unary(self, method: MethodSpec, request: Message, options: CallOptions) -> Reply:
        """Make a unary call.

        Raises:
            AsapError: The call failed (the subclass the server raised, or the one for gRPC's code).
            InvalidState: The channel is closed.
            ValueError: ``method`` is not unary.
        """
        multicallable = self._unary_unary.get(method.path)
        if multicallable is None:
            raise self._misuse(method)
        call = multicallable(request, timeout=options.timeout, metadata=options.metadata or None)
        try:
            response = await call
            trailing = await call.trailing_metadata()
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc) from exc
        except asyncio.CancelledError:
            error = self._not_ours(cancelled_locally=False)
            if error is None:
                raise
            raise error from None
        return Reply(response, _metadata(trailing))

    def open_stream(
        self,
        method: MethodSpec,
        requests: Message | AsyncIterable[Message],
        options: CallOptions,
    ) -> ResponseStream:
        """Start a streaming call (see :meth:`Channel.open_stream`).

        Raises:
            InvalidState: The channel is closed.
            ValueError: ``method`` is unary.
            TypeError: ``requests`` is an iterable for a server-streaming method, or one message
                for a client-streaming one.
        """
        metadata = options.metadata or None
        if method.arity is Arity.UNARY_STREAM:
            unary_stream = self._unary_stream.get(method.path)
            if unary_stream is None:
                raise self._misuse(method)
            if not isinstance(requests, Message):
                message = f"{method.name} takes one request message"
                raise TypeError(message)
            return GrpcResponseStream(
                self, unary_stream(requests, timeout=options.timeout, metadata=metadata)
            )
        call: StreamingRequestCall
        if method.arity is Arity.STREAM_UNARY:
            stream_unary = self._stream_unary.get(method.path)
            if stream_unary is None:
                raise self._misuse(method)
            upload = _iterator(method, requests)
            call = stream_unary(timeout=options.timeout, metadata=metadata)
        else:
            stream_stream = self._stream_stream.get(method.path)
            if stream_stream is None:
                raise self._misuse(method)
            upload = _iterator(method, requests)
            call = stream_stream(timeout=options.timeout, metadata=metadata)
        uploader = _Upload(call, method)
        task = self._uploads.spawn(uploader.run(upload), name=f"asap.grpc.upload {method.name}")

        def call_over(_call: object) -> None:
            # Nothing is written any more, and the iterator may wait forever. An upload that has
            # not started is left to start, pull the iterator once and stop (see _Upload).
            if uploader.started:
                task.cancel()

        call.add_done_callback(call_over)
        return GrpcResponseStream(self, call, uploader)

    async def close(self) -> None:
        """Close the connection; calls in flight fail with ConnectionLost (UNAVAILABLE)."""
        if self._closed:
            return
        self._closed = True
        self._unary_unary.clear()
        self._unary_stream.clear()
        self._stream_unary.clear()
        self._stream_stream.clear()
        await self._channel.close()
        await self._uploads.close()

    def _misuse(self, method: MethodSpec) -> Exception:
        if self._closed:
            return InvalidState(_CLOSED_MESSAGE)
        if method.path not in METHODS:
            return ValueError(f"unknown method {method.path}")
        kind = "streaming" if method.arity is Arity.UNARY_UNARY else "unary"
        return ValueError(f"{method.name} is not a {kind} method")

    def _not_ours(self, *, cancelled_locally: bool) -> AsapError | None:
        """The error for a CancelledError the awaiting task did not ask for, or None if it did."""
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            return None
        if self._closed:
            return ConnectionLost("the channel was closed before the call completed")
        if cancelled_locally:
            return Cancelled("the call was cancelled by the caller")
        return None


def _cancelling() -> bool:
    """Whether the current task is being cancelled (its own CancelledError is then not ours)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class GrpcResponseStream(ResponseStream):
    """The responses of a grpc.aio streaming call (for client streaming: its one response).

    Args:
        channel: The channel the call runs on.
        call: The grpc.aio call; a StreamUnaryCall yields its one response, then ends.
        upload: What writes a client-streaming call's requests.
    """

    def __init__(
        self,
        channel: GrpcChannel,
        call: grpc.aio.UnaryStreamCall[Message, Message]
        | grpc.aio.StreamStreamCall[Message, Message]
        | grpc.aio.StreamUnaryCall[Message, Message],
        upload: _Upload | None = None,
    ) -> None:
        self._channel = channel
        self._call = call
        self._upload = upload
        self._reader: (
            grpc.aio.UnaryStreamCall[Message, Message]
            | grpc.aio.StreamStreamCall[Message, Message]
            | None
        ) = None
        self._single: grpc.aio.StreamUnaryCall[Message, Message] | None = None
        if isinstance(call, grpc.aio.StreamUnaryCall):
            self._single = call
        else:
            self._reader = call
        self._done = False
        self._cancelled = False
        self._trailing: Metadata = ()

    @property
    def trailing_metadata(self) -> Metadata:
        """Trailing metadata, once the call has ended (empty before)."""
        return self._trailing

    async def __anext__(self) -> Message:
        """Return the next response.

        Raises:
            StopAsyncIteration: The call ended with OK.
            AsapError: The call failed; ``Cancelled`` after :meth:`cancel`, ``ConnectionLost``
                after the channel was closed.
        """
        if self._done:
            raise StopAsyncIteration
        reader, single = self._reader, self._single
        try:
            if reader is not None:
                response: object = await reader.read()
                self._done = response is grpc.aio.EOF
            elif single is not None:
                response = await single
                self._done = True
            if self._done:
                self._trailing = _metadata(await self._call.trailing_metadata())
        except grpc.aio.AioRpcError as exc:
            self._done = True
            error = error_from_rpc(exc, cancelled_locally=self._cancelled)
            self._trailing = error.trailing_metadata
            raise error from exc
        except asyncio.CancelledError:
            self._done = True
            local = self._channel._not_ours(cancelled_locally=self._cancelled)  # noqa: SLF001 - a friend class
            failed = self._upload.error if self._upload is not None else None
            if failed is not None and not _cancelling():
                raise failed from failed.__cause__  # the upload cancelled the call
            if local is None:
                raise
            raise local from None
        if not isinstance(response, Message):  # grpc.aio.EOF: the server ended the call with OK
            raise StopAsyncIteration
        return response

    async def cancel(self) -> None:
        """Abandon the call; the server's handler is cancelled. Idempotent."""
        self._cancelled = True
        self._call.cancel()
