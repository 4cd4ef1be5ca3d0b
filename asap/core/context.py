"""CallContext: what a handler knows about the call it serves, the same on every transport."""

from __future__ import annotations

import asyncio
import enum
import functools
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final, NoReturn

from asap._typing import Metadata, MetadataValue
from asap.core.method import MethodSpec
from asap.core.tasks import loop_clock
from asap.errors import AsapError
from asap.protocol.admission import peer_key


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated principal, produced by a token verifier."""

    subject: str
    """Who the caller is, for example an agent URN ``urn:asap:agent:coordinator``."""
    claims: Mapping[str, str] = field(default_factory=dict)
    """Further facts the verifier established (scopes, tenant, …)."""


ANONYMOUS_PREFIX: Final = "peer:"
"""How :attr:`CallContext.principal` starts for a caller with no identity."""


AUTHORIZATION: Final = "authorization"
"""The metadata key (and HTTP header) that carries ``Bearer <token>``."""

REDACTED: Final = "[redacted]"
"""What ``ctx.metadata`` holds instead of each ``authorization`` value (see :class:`CallContext`)."""


def redact_credentials(metadata: Metadata) -> tuple[Metadata, MetadataValue | None]:
    """``metadata`` with every ``authorization`` value replaced by :data:`REDACTED`, and the first one.

    Returns ``metadata`` itself when it carries no ``authorization`` entry (the common case).
    """
    for key, _ in metadata:  # a loop, not any(): no generator on every call's path
        if key == AUTHORIZATION:
            break
    else:
        return metadata, None
    first = next(value for key, value in metadata if key == AUTHORIZATION)
    redacted = tuple(
        (key, REDACTED) if key == AUTHORIZATION else (key, value) for key, value in metadata
    )
    return redacted, first


DEADLINE_TOLERANCE: Final = 0.005
"""Seconds before the deadline a cancellation already counts as the deadline's.

An event loop runs a timer up to its clock resolution early, and a transport's own deadline timer
(gRPC's) runs on another clock: a cancellation this close to the deadline is the deadline's.
"""


class CancelReason(enum.Enum):
    """Why a call's task was cancelled, as far as the core knows (see :class:`CallContext`).

    Only ``CALLER`` and ``DEADLINE`` cancel the envelope handlers a call started. Any other
    cancellation of the call's task — the connection was cut, the peer went away, the transport gave
    up — is ``TRANSPORT``: the handlers run to completion and their outcomes are stored, so the
    caller's retransmission is answered from the store instead of running them again.
    """

    TRANSPORT = "transport"
    """The connection or the peer failed (also what an unexplained cancellation counts as)."""
    CALLER = "caller"
    """The caller explicitly cancelled the call (the bridge's Cancel frame)."""
    DEADLINE = "deadline"
    """The call's deadline passed."""


class CallContext:
    """The per-call context: method, metadata, peer, identity, deadline, cancellation, trailers.

    Created by the transport for every call and passed to middleware and handlers. It is not
    shared between calls. ``transport`` is for logs only; behaviour never depends on it.

    Credentials never reach ``metadata``: each ``authorization`` value there reads
    :data:`REDACTED`, so neither handlers nor what logs the metadata can leak the token; the
    authenticated principal is in ``identity``, and authentication reads :attr:`credentials`.
    """

    __slots__ = (
        "_cancel_reason",
        "_cancelled",
        "_clock",
        "_credentials",
        "_trailing",
        "deadline",
        "deadline_enforced_by_transport",
        "eager",
        "identity",
        "metadata",
        "method",
        "peer",
        "tls_identity",
        "transport",
    )

    def __init__(
        self,
        *,
        method: MethodSpec,
        metadata: Metadata,
        peer: str,
        transport: str,
        timeout: float | None,
        deadline_enforced_by_transport: bool = False,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.method = method
        self.metadata, self._credentials = redact_credentials(metadata)
        self.peer = peer
        self.transport = transport
        # The transport passes its loop's clock (asap.core.tasks.loop_clock) when it has it:
        # asking asyncio for the running loop costs a getpid() system call on Python 3.11.
        self._clock = clock
        self.deadline: float | None = None if timeout is None else self.now() + timeout
        """The deadline on the event loop's clock (``loop.time()``), or None."""
        self.deadline_enforced_by_transport = deadline_enforced_by_transport
        """True when the transport itself cancels the call at its deadline (gRPC does)."""
        self.identity: Identity | None = None
        """Set by authentication middleware (or by the transport from a client certificate)."""
        self.tls_identity: Identity | None = None
        """The identity of the connection's verified client certificate (mTLS), set by the
        transport; authentication may replace :attr:`identity` only with the same subject."""
        self.eager = False
        """True while the transport runs the call eagerly, outside any task (see
        :func:`asap.core.tasks.start_eagerly`); the core hands off before code that needs a task."""
        self._trailing: list[tuple[str, MetadataValue]] = []
        self._cancelled = False
        self._cancel_reason: CancelReason | None = None

    @property
    def principal(self) -> str:
        """The key rate limits and quotas are kept under: the identity's subject, else the peer.

        An anonymous peer is its IPv4 address or its IPv6 /64 (``peer:2001:db8:1:2::/64``): an
        IPv6 host usually owns a whole /64, and every address in it is the same caller.
        """
        if self.identity is not None:
            return self.identity.subject
        return _anonymous_principal(self.peer)

    @property
    def peer_host(self) -> str:
        """The peer's address without its port (what anonymous limits are kept under)."""
        return _host_of(self.peer)

    @property
    def credentials(self) -> MetadataValue | None:
        """The request's first ``authorization`` value (``Bearer <token>``), for authentication only.

        Never log it; ``metadata`` shows :data:`REDACTED` in its place.
        """
        return self._credentials

    def now(self) -> float:
        """The event loop's time (``loop.time()``), the clock :attr:`deadline` is on."""
        clock = self._clock
        if clock is None:
            clock = self._clock = loop_clock(asyncio.get_running_loop())
        return clock()

    def time_remaining(self) -> float | None:
        """Seconds until the deadline (never negative), or None when the call has no deadline."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - self.now())

    def metadata_value(self, key: str) -> MetadataValue | None:
        """Return the first request metadata value for ``key`` (lowercase), or None."""
        for name, value in self.metadata:
            if name == key:
                return value
        return None

    def set_trailing_metadata(self, *entries: tuple[str, MetadataValue]) -> None:
        """Add trailing metadata, sent with the final status (success or error)."""
        for key, value in entries:
            self._trailing.append((key.lower(), value))

    @property
    def trailing_metadata(self) -> Metadata:
        """The trailing metadata set so far."""
        return tuple(self._trailing)

    def mark_cancelled(self) -> None:
        """Record that the caller cancelled the call (called by the dispatcher)."""
        self._cancelled = True

    def cancel_requested(self) -> None:
        """Record that the caller explicitly cancelled the call; the transport then cancels it.

        Transports call this before cancelling the call's task for an explicit cancel (the
        bridge's Cancel frame), and never for a connection loss: only then are the envelope
        handlers the call started cancelled too.
        """
        self._cancel_reason = CancelReason.CALLER

    def deadline_reached(self) -> None:
        """Record that the call is over because its deadline passed (the caller's copy of it).

        The bridge calls this for a Cancel that says so (``Cancel.deadline_exceeded``): the
        caller's clock may run ahead of the server's copy of the deadline. Ignored for a call
        without a deadline.
        """
        if self.deadline is not None:
            self._cancel_reason = CancelReason.DEADLINE

    def cancel_reason(self) -> CancelReason:
        """Why the call's task is being cancelled: CALLER, DEADLINE (past it), else TRANSPORT."""
        if self._cancel_reason is not None:
            return self._cancel_reason
        if self.deadline is not None and self.now() + DEADLINE_TOLERANCE >= self.deadline:
            return CancelReason.DEADLINE
        return CancelReason.TRANSPORT

    def cancelled(self) -> bool:
        """True once the caller cancelled the call or its deadline passed."""
        return self._cancelled

    def abort(self, error: AsapError) -> NoReturn:
        """End the call now with ``error``; equivalent to raising it."""
        raise error


def _host_of(peer: str) -> str:
    """The address in a peer string (``ipv4:1.2.3.4:5``, ``ipv6:[::1]:5``) without its port."""
    host = peer
    for prefix in ("ipv4:", "ipv6:"):
        host = host.removeprefix(prefix)
    # gRPC reports IPv6 peers percent-encoded ("ipv6:%5B::1%5D:5"); decode the brackets.
    host = urllib.parse.unquote(host)
    if host.startswith("["):
        return host[1 : host.find("]")]
    if host.count(":") == 1:
        return host.rsplit(":", 1)[0]
    return host


@functools.lru_cache(maxsize=4096)
def _anonymous_principal(peer: str) -> str:
    """``peer:<IPv4 or IPv6 /64>`` for a peer string.

    Cached (bounded): the guards ask for it several times per call, and parsing the address was a
    visible share of a call's cost.
    """
    return f"{ANONYMOUS_PREFIX}{peer_key(_host_of(peer))}"
