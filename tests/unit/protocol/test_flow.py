"""StreamCredit: the credit arithmetic of bridge.proto "Flow control", without sockets."""

from __future__ import annotations

import pytest

from asap.errors import FlowControlViolation, MalformedFrame
from asap.protocol.flow import MAX_WINDOW_BYTES, StreamCredit, wire_size


def test_a_sender_may_overdraw_once_then_waits() -> None:
    """A frame may be sent while credit is above zero, even if it costs more (rule 2)."""
    credit = StreamCredit(send_window=100, receive_window=100)
    assert credit.can_send
    credit.sent(60)
    assert credit.can_send
    credit.sent(60)
    assert credit.send == -20
    assert not credit.can_send


def test_window_update_wakes_a_blocked_sender_only_once_positive() -> None:
    """An update reports True only when it turns a blocked stream sendable."""
    credit = StreamCredit(send_window=10, receive_window=10)
    credit.sent(30)
    assert credit.window_update(5) is False  # -15: still blocked
    assert credit.window_update(20) is True  # 5
    assert credit.window_update(1) is False  # was not blocked


@pytest.mark.parametrize("increment", [0, -1])
def test_zero_or_negative_increment_is_malformed(increment: int) -> None:
    """Rule 5: an increment must be above zero."""
    with pytest.raises(MalformedFrame):
        StreamCredit(10, 10).window_update(increment)


def test_credit_cannot_pass_the_maximum() -> None:
    """Rule 5: credit above 2^31 - 1 is refused and leaves the credit unchanged."""
    credit = StreamCredit(MAX_WINDOW_BYTES - 5, 10)
    with pytest.raises(MalformedFrame):
        credit.window_update(6)
    assert credit.send == MAX_WINDOW_BYTES - 5
    credit.window_update(5)
    assert credit.send == MAX_WINDOW_BYTES


def test_receiving_without_credit_is_a_violation() -> None:
    """Rule 4: a frame arriving with the receiver's window at zero or below breaks the rules."""
    credit = StreamCredit(10, receive_window=100)
    credit.received(150)  # one frame may overdraw
    with pytest.raises(FlowControlViolation):
        credit.received(1)


def test_grants_are_batched_at_half_a_window() -> None:
    """Rule 3: consumed bytes are granted once half a window has been consumed, not per message."""
    credit = StreamCredit(10, receive_window=1000)
    for _ in range(5):
        credit.received(100)
    assert [credit.consumed(100) for _ in range(5)] == [0, 0, 0, 0, 500]
    assert credit.receive == 1000
    assert credit.ungranted == 0


def test_an_exhausted_window_is_granted_at_once() -> None:
    """When the peer has no credit left, whatever was consumed is granted, however little."""
    credit = StreamCredit(10, receive_window=1000)
    credit.received(1200)  # an overdraw: the peer is now blocked
    assert credit.consumed(1200) == 1200
    assert credit.receive == 1000


def test_settings_change_adjusts_open_streams() -> None:
    """A new initial window changes the send credit by the difference (RFC 9113 §6.9.2)."""
    credit = StreamCredit(100, 10)
    credit.sent(150)
    assert credit.adjust_send(20) is False
    assert credit.adjust_send(100) is True
    assert credit.send == 70
    assert credit.adjust_send(-100) is False
    assert credit.send == -30


def test_wire_size_counts_utf8_bytes() -> None:
    """The cost of a frame is the bytes of its WebSocket message, UTF-8 for text."""
    assert wire_size(b"\x00\x01") == 2
    assert wire_size("abc") == 3
    assert wire_size("é✓") == 5
