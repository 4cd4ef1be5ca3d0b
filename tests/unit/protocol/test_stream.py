"""Unit tests for asap.protocol.stream: the per-call transition table."""

from __future__ import annotations

import itertools

import pytest

from asap.errors import InvalidState
from asap.protocol.stream import TRANSITIONS, Stream, StreamEvent, StreamState


def _at(state: StreamState) -> Stream:
    stream = Stream(1)
    stream.state = state
    return stream


def test_new_stream_is_idle() -> None:
    """A new stream starts IDLE with no response started."""
    stream = Stream(7)
    assert stream.state is StreamState.IDLE
    assert not stream.response_started
    assert repr(stream) == "Stream(7, IDLE)"


@pytest.mark.parametrize(("pair", "target"), list(TRANSITIONS.items()))
def test_allowed_transitions(pair: tuple[StreamState, StreamEvent], target: StreamState) -> None:
    """Every pair in the table leads to its target state."""
    state, event = pair
    stream = _at(state)
    assert stream.next_state(event) is target
    assert stream.handle(event) is target
    assert stream.state is target


_FORBIDDEN = [
    (state, event)
    for state, event in itertools.product(StreamState, StreamEvent)
    if (state, event) not in TRANSITIONS
]


@pytest.mark.parametrize(("state", "event"), _FORBIDDEN)
def test_forbidden_transitions(state: StreamState, event: StreamEvent) -> None:
    """Every pair missing from the table is refused and leaves the state unchanged."""
    stream = _at(state)
    assert stream.next_state(event) is None
    with pytest.raises(InvalidState, match="not allowed"):
        stream.handle(event)
    assert stream.state is state


def test_closed_is_final() -> None:
    """No event leaves CLOSED."""
    assert not [pair for pair in TRANSITIONS if pair[0] is StreamState.CLOSED]


def test_message_after_half_close_is_refused() -> None:
    """The client may not send a message after HalfClose."""
    stream = Stream(1)
    stream.handle(StreamEvent.START)
    stream.handle(StreamEvent.HALF_CLOSE)
    assert stream.next_state(StreamEvent.CLIENT_MESSAGE) is None


@pytest.mark.parametrize("first", [StreamEvent.HEADERS, StreamEvent.SERVER_MESSAGE])
def test_headers_only_before_the_response(first: StreamEvent) -> None:
    """Headers are refused once headers or a response message were sent."""
    stream = Stream(1)
    stream.handle(StreamEvent.START)
    stream.handle(first)
    assert stream.response_started
    assert stream.next_state(StreamEvent.HEADERS) is None
    with pytest.raises(InvalidState, match="headers already sent"):
        stream.handle(StreamEvent.HEADERS)


def test_unary_call_runs_through() -> None:
    """A unary call goes IDLE → OPEN → HALF_CLOSED_REMOTE → CLOSED."""
    stream = Stream(1)
    states = [
        stream.handle(event)
        for event in (
            StreamEvent.START,
            StreamEvent.CLIENT_MESSAGE,
            StreamEvent.HALF_CLOSE,
            StreamEvent.HEADERS,
            StreamEvent.SERVER_MESSAGE,
            StreamEvent.STATUS,
        )
    ]
    assert states[-1] is StreamState.CLOSED
    assert states[2] is StreamState.HALF_CLOSED_REMOTE
