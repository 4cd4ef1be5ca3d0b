"""ASAP: the Async Simple Agent Protocol.

Generated message modules live in ``asap.v1`` (``from asap.v1 import envelope_pb2``). In a wheel
they are installed inside this package; in a development checkout they stay in ``generated/asap/v1``
and ``pkgutil.extend_path`` below joins that directory to this package's search path. It must run
before anything imports ``asap.v1``.
"""

from __future__ import annotations

from pkgutil import extend_path


__path__ = extend_path(__path__, __name__)

from asap.client import (
    NO_DEADLINE,
    Client,
    DuplexStream,
    RetryPolicy,
    Subscription,
    task_envelope,
)
from asap.connect import connect, discover, open_channel
from asap.core.agent import Agent, Incoming
from asap.core.context import CallContext, Identity
from asap.core.interceptors import Interceptor
from asap.core.middleware import BearerAuth, Middleware
from asap.errors import (
    AsapError,
    Code,
    InsecureTransportError,
    InvalidState,
)
from asap.protocol.limits import Limits
from asap.server import Server
from asap.tls import ClientTLS, ServerTLS


__all__ = [
    "NO_DEADLINE",
    "Agent",
    "AsapError",
    "BearerAuth",
    "CallContext",
    "Client",
    "ClientTLS",
    "Code",
    "DuplexStream",
    "Identity",
    "Incoming",
    "InsecureTransportError",
    "Interceptor",
    "InvalidState",
    "Limits",
    "Middleware",
    "RetryPolicy",
    "Server",
    "ServerTLS",
    "Subscription",
    "connect",
    "discover",
    "open_channel",
    "task_envelope",
]
