"""Unit tests for asap.protocol.events: events are slotted values with read-only (Final) fields."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from asap.errors import MalformedFrame
from asap.protocol import events


ALL_EVENTS = typing.get_args(events.Event)


@pytest.mark.parametrize("cls", ALL_EVENTS)
def test_events_are_slotted_with_final_fields(cls: type) -> None:
    """Every event class is a slotted dataclass whose fields a type checker treats as read-only."""
    params = dataclasses.fields(cls)
    assert "__slots__" in vars(cls)
    assert params
    annotations = cls.__annotations__
    assert [name for name in annotations if not annotations[name].startswith("Final[")] == []


@pytest.mark.parametrize("cls", ALL_EVENTS)
def test_events_init_is_written_out(cls: type) -> None:
    """No event uses a dataclass-generated __init__ (interpreted, and slow when frozen)."""
    assert not cls.__dataclass_params__.init  # type: ignore[attr-defined]
    assert not cls.__dataclass_params__.frozen  # type: ignore[attr-defined]


def test_event_fields_keep_their_order_and_defaults() -> None:
    """The written-out __init__ takes the fields in declaration order, with their defaults."""
    event = events.CallCancelled(3, "bye")
    assert (event.stream_id, event.reason, event.deadline_exceeded) == (3, "bye", False)
    started = events.CallStarted(1, "/m", (), None, None)
    assert (started.message, started.message_size, started.half_closed) == (None, 0, False)
    assert repr(events.HalfClosed(2)) == "HalfClosed(stream_id=2)"


def test_event_union_covers_both_sides() -> None:
    """Event is the union of the server's and the client's events."""
    server = set(typing.get_args(events.ServerEvent))
    client = set(typing.get_args(events.ClientEvent))
    assert set(ALL_EVENTS) == server | client
    assert {events.StreamError, events.ProtocolViolation, events.MessageReceived} <= server & client


def test_events_compare_by_value() -> None:
    """Events with equal fields are equal."""
    error = MalformedFrame("x")
    assert events.StreamError(1, error) == events.StreamError(1, error)
    assert events.HalfClosed(1) != events.HalfClosed(2)
