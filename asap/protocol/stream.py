"""The state machine of one call (stream) on the WebSocket bridge, as a transition table.

Theory of operation (bridge.proto, "Calls (streams)"; the shape of RFC 9113 §5.1's HTTP/2 stream
states, named from the server's side)::

    client → CallStart, zero or more MessageFrame, then HalfClose (or Cancel at any time)
    server → optional HeadersFrame, zero or more MessageFrame, then exactly one CallStatus

                  START                  HALF_CLOSE
        IDLE ─────────────▶ OPEN ─────────────────────▶ HALF_CLOSED_REMOTE
                            │  ▲ CLIENT_MESSAGE            │  ▲ HEADERS, SERVER_MESSAGE
                            │  │ HEADERS, SERVER_MESSAGE   │  │
                            │  └──────┘                    │  └──────┘
                            │ STATUS, CANCEL               │ STATUS, CANCEL
                            └──────────────▶ CLOSED ◀──────┘

Every event is named after the frame that causes it, and each frame kind has one sender, so the
same table serves the server (which receives the client's events and sends its own) and the client
(the other way round). Rules:

1. Everything that decides whether a frame is allowed on a stream lives in this file: the table
   :data:`TRANSITIONS` and the one fact it does not encode, whether the server has started its
   response (HEADERS is allowed only before the first HEADERS or SERVER_MESSAGE).
2. A (state, event) pair missing from the table is a violation. The session decides what that
   means: a peer's violation fails the stream with MALFORMED_FRAME, our own is a bug
   (:class:`asap.errors.InvalidState`).
3. CLOSED is final. Once CallStatus is sent the server sends nothing more on the stream; a
   Cancel closes it at once on both sides (the server still answers CANCELLED).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import Final

from asap.errors import InvalidState
from asap.protocol.flow import StreamCredit


class StreamState(Enum):
    """Where a call is in its life."""

    # Enum's own __hash__ is Python code (hash of the name), run twice per table lookup on every
    # frame. Members are singletons compared by identity, so identity hashing is equivalent and
    # runs in C.
    __hash__ = object.__hash__

    IDLE = "idle"
    """No CallStart yet."""
    OPEN = "open"
    """Started; the client may still send messages."""
    HALF_CLOSED_REMOTE = "half_closed_remote"
    """The client half-closed: only the server sends now (RFC 9113's "half-closed (remote)")."""
    CLOSED = "closed"
    """Over: CallStatus was sent, or the client cancelled."""


class StreamEvent(Enum):
    """A frame that moves a call along; the name says who sends it."""

    __hash__ = object.__hash__  # as StreamState.__hash__: identity, in C

    START = "start"
    """Client: CallStart."""
    CLIENT_MESSAGE = "client_message"
    """Client: a request MessageFrame."""
    HALF_CLOSE = "half_close"
    """Client: HalfClose."""
    CANCEL = "cancel"
    """Client: Cancel."""
    HEADERS = "headers"
    """Server: HeadersFrame."""
    SERVER_MESSAGE = "server_message"
    """Server: a response MessageFrame."""
    STATUS = "status"
    """Server: CallStatus."""


IDLE: Final = StreamState.IDLE
OPEN: Final = StreamState.OPEN
HALF_CLOSED_REMOTE: Final = StreamState.HALF_CLOSED_REMOTE
CLOSED: Final = StreamState.CLOSED

TRANSITIONS: Final[Mapping[tuple[StreamState, StreamEvent], StreamState]] = {
    (IDLE, StreamEvent.START): OPEN,
    (OPEN, StreamEvent.CLIENT_MESSAGE): OPEN,
    (OPEN, StreamEvent.HALF_CLOSE): HALF_CLOSED_REMOTE,
    (OPEN, StreamEvent.HEADERS): OPEN,
    (OPEN, StreamEvent.SERVER_MESSAGE): OPEN,
    (OPEN, StreamEvent.STATUS): CLOSED,
    (OPEN, StreamEvent.CANCEL): CLOSED,
    (HALF_CLOSED_REMOTE, StreamEvent.HEADERS): HALF_CLOSED_REMOTE,
    (HALF_CLOSED_REMOTE, StreamEvent.SERVER_MESSAGE): HALF_CLOSED_REMOTE,
    (HALF_CLOSED_REMOTE, StreamEvent.STATUS): CLOSED,
    (HALF_CLOSED_REMOTE, StreamEvent.CANCEL): CLOSED,
}
"""Every allowed (state, event) pair and the state it leads to; anything else is a violation."""

_ROWS: Final[dict[StreamState, dict[StreamEvent, StreamState]]] = {
    state: {event: target for (source, event), target in TRANSITIONS.items() if source is state}
    for state in StreamState
}
"""TRANSITIONS by state: one lookup per frame, with no (state, event) tuple to build and hash.

The module's names the per-frame path reads are ``Final`` and this one a ``dict``: compiled, each
is then a C variable and a direct dict lookup, not a search of the module's namespace and a
generic ``get`` call (measured: 19 namespace lookups per bridge Send, 1.3 % of its server time)."""

HEADERS: Final = StreamEvent.HEADERS
SERVER_MESSAGE: Final = StreamEvent.SERVER_MESSAGE


class Stream:
    """One call's state.

    Args:
        stream_id: The call's stream id.
    """

    __slots__ = ("combined", "credit", "response_started", "state", "stream_id")

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id
        """The call's stream id."""
        self.state = IDLE
        """The current state."""
        self.response_started = False
        """Whether the server has sent HeadersFrame or a MessageFrame (no HEADERS after that)."""
        self.combined = False
        """Whether the CallStart carried a message or half_close (bridge.proto "Combined
        frames"): a client that sends them reads them, so the server may combine its answer."""
        self.credit: StreamCredit | None = None
        """Flow-control credit on a bridge revision 2 connection; ``None`` on revision 1."""

    def __repr__(self) -> str:
        return f"Stream({self.stream_id}, {self.state.name})"

    def next_state(self, event: StreamEvent) -> StreamState | None:
        """The state ``event`` would lead to, or ``None`` if it is not allowed now."""
        if event is HEADERS and self.response_started:
            return None
        return _ROWS[self.state].get(event)

    def advance(self, event: StreamEvent) -> bool:
        """Apply ``event`` if it is allowed now (the sessions' per-frame path: one lookup).

        Returns:
            ``True`` if applied; ``False`` if ``event`` is not allowed (the state is unchanged).
        """
        # next_state, inlined: this runs for every frame of every call.
        if event is HEADERS and self.response_started:
            return False
        state = _ROWS[self.state].get(event)
        if state is None:
            return False
        self.state = state
        if event is SERVER_MESSAGE or event is HEADERS:
            self.response_started = True
        return True

    def handle(self, event: StreamEvent) -> StreamState:
        """Apply ``event`` and return the new state.

        Raises:
            asap.errors.InvalidState: ``event`` is not allowed in the current state.
        """
        if not self.advance(event):
            msg = (
                f"{event.name} is not allowed on stream {self.stream_id} in state {self.state.name}"
            )
            if event is HEADERS and self.response_started:
                msg = f"headers already sent or a message already sent on stream {self.stream_id}"
            raise InvalidState(msg)
        return self.state
