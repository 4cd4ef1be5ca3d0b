"""Heartbeat: the ping schedule and liveness verdict from timestamps alone."""

from __future__ import annotations

from asap.protocol.heartbeat import Beat, Heartbeat


def test_pings_every_interval_while_answered() -> None:
    """A ping is due every interval; an answer clears it."""
    beat = Heartbeat(interval=10.0, timeout=5.0, now=0.0)
    assert beat.next_deadline() == 10.0
    assert beat.poll(9.9) is Beat.NOTHING
    assert beat.poll(10.0) is Beat.PING
    first = beat.payload
    beat.pong(first)
    assert beat.pong_deadline is None
    assert beat.poll(20.0) is Beat.PING
    assert beat.payload != first


def test_an_unanswered_ping_is_fatal_after_the_timeout() -> None:
    """No pong within the timeout: the connection is dead."""
    beat = Heartbeat(interval=10.0, timeout=5.0, now=0.0)
    assert beat.poll(10.0) is Beat.PING
    assert beat.next_deadline() == 15.0
    assert beat.poll(14.9) is Beat.NOTHING
    assert beat.poll(15.0) is Beat.DEAD


def test_a_pong_for_another_ping_does_not_count() -> None:
    """Only the answer to the outstanding ping clears it."""
    beat = Heartbeat(interval=1.0, timeout=1.0, now=0.0)
    assert beat.poll(1.0) is Beat.PING
    beat.pong(b"other")
    assert beat.poll(2.0) is Beat.DEAD
