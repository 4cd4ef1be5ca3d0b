"""Serving state shared by every transport, and the standard health Check RPC over it.

Both transports answer ``/grpc.health.v1.Health/Check`` from :meth:`HealthState.check`, so a
caller gets the same answer on either (gRPC serves Watch from grpcio-health-checking's servicer).
Health calls skip the middleware on both (no credentials, no rate limit), as load balancers expect.
Since they take no credentials, the long-lived ones are bounded per server instead: at most
``max_watchers`` Watch streams at once (:meth:`HealthState.try_watch`); the bridge has no Watch.
"""

from __future__ import annotations

from collections.abc import Callable

from grpc_health.v1 import health_pb2  # plain protobuf messages; nothing here imports grpc

from asap.core.method import SERVICE_NAME, Arity, MethodSpec
from asap.core.service import ServerCall
from asap.errors import AsapError, InvalidArgument, MalformedFrame, NotFound


HEALTH_CHECK = MethodSpec(
    name="Check",
    path="/grpc.health.v1.Health/Check",
    request_type=health_pb2.HealthCheckRequest,
    response_type=health_pb2.HealthCheckResponse,
    arity=Arity.UNARY_UNARY,
)
"""The standard health Check RPC."""

HEALTH_SERVICES = ("", SERVICE_NAME)
"""The service names health reports on: the whole server, and AgentService."""


class HealthState:
    """Whether the server is serving; listeners are told of every change.

    Args:
        max_watchers: Health Watch streams the server serves at once (``Limits.max_health_watchers``).
    """

    def __init__(self, max_watchers: int = 100) -> None:
        self._serving = False
        self._listeners: list[Callable[[bool], None]] = []
        self.max_watchers = max_watchers
        """Watch streams served at once at most."""
        self.watchers = 0
        """Watch streams open now."""

    def try_watch(self) -> bool:
        """Take a Watch slot; ``False`` when all ``max_watchers`` are taken (refuse the Watch)."""
        if self.watchers >= self.max_watchers:
            return False
        self.watchers += 1
        return True

    def unwatch(self) -> None:
        """A Watch stream ended: give its slot back."""
        self.watchers = max(0, self.watchers - 1)

    @property
    def serving(self) -> bool:
        """True between start and the beginning of shutdown."""
        return self._serving

    def subscribe(self, listener: Callable[[bool], None]) -> None:
        """Call ``listener(serving)`` now and on every change."""
        self._listeners.append(listener)
        listener(self._serving)

    async def check(self, call: ServerCall) -> AsapError | None:
        """Answer one health Check call (on every transport); returns its outcome, never raises.

        A request that does not parse is INVALID_ARGUMENT (MALFORMED_FRAME, from the transport's
        ``read``), so the call always gets a status and frees its stream.
        """
        try:
            request = await call.read()
            if not isinstance(request, health_pb2.HealthCheckRequest):
                return InvalidArgument("expected one HealthCheckRequest")
            if await call.read() is not None:
                return MalformedFrame("more than one HealthCheckRequest")
            if request.service not in HEALTH_SERVICES:
                return NotFound(f"unknown service {request.service[:200]!r}")
            status = (
                health_pb2.HealthCheckResponse.SERVING
                if self._serving
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            await call.write(health_pb2.HealthCheckResponse(status=status))
        except AsapError as error:
            return error
        return None

    def set_serving(self, serving: bool) -> None:
        """Change the state and notify listeners."""
        if serving != self._serving:
            self._serving = serving
            for listener in self._listeners:
                listener(serving)
