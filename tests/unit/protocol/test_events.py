"""Unit tests for asap.protocol.events: events are frozen, slotted values."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from asap.errors import MalformedFrame
from asap.protocol import events
from asap.protocol.frames import CloseCode


ALL_EVENTS = typing.get_args(events.Event)


@pytest.mark.parametrize("cls", ALL_EVENTS)
def test_events_are_frozen_and_slotted(cls: type) -> None:
    """Every event class is a frozen dataclass with __slots__."""
    params = dataclasses.fields(cls)
    assert cls.__dataclass_params__.frozen  # type: ignore[attr-defined]
    assert "__slots__" in vars(cls)
    assert params


def test_event_is_immutable() -> None:
    """Assigning to an event's field raises."""
    event = events.ProtocolViolation(CloseCode.PROTOCOL_ERROR, "bad")
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.reason = "other"  # type: ignore[misc]


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
