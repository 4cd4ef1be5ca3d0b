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


@pytest.mark.parametrize(("state", "event"), list(itertools.product(StreamState, StreamEvent)))
def test_advance_agrees_with_the_table(state: StreamState, event: StreamEvent) -> None:
    """advance() applies exactly the table's transitions and reports refusals without raising."""
    stream = _at(state)
    target = TRANSITIONS.get((state, event))
    assert stream.advance(event) is (target is not None)
    assert stream.state is (state if target is None else target)


def test_advance_refuses_headers_after_the_response_started() -> None:
    """advance() applies the one rule outside the table, as next_state() does."""
    stream = Stream(1)
    assert stream.advance(StreamEvent.START)
    assert stream.advance(StreamEvent.SERVER_MESSAGE)
    assert stream.response_started
    assert not stream.advance(StreamEvent.HEADERS)
    assert stream.state is StreamState.OPEN


def test_states_and_events_hash_by_identity() -> None:
    """The members hash by identity (in C), and still work as keys and set members."""
    for member in [*StreamState, *StreamEvent]:
        assert hash(member) == object.__hash__(member)
    assert {StreamState.OPEN: 1}[StreamState.OPEN] == 1
    assert StreamEvent.START in frozenset(StreamEvent)
    assert StreamState("open") is StreamState.OPEN
