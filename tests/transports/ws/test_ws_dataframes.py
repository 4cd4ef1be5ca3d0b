"""Unit tests for asap.transports.ws.dataframes, checked against websockets' own frame codec."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from asap.transports.ws.dataframes import (
    BINARY,
    TEXT,
    MaskPool,
    apply_mask,
    frame_header,
    parse_header,
)


LENGTHS = [0, 1, 125, 126, 127, 65535, 65536, 70000]
"""Each side of both length-encoding boundaries (7 bits, 16 bits, 64 bits)."""


def _websockets_parse(data: bytes, *, mask: bool) -> Frame:
    reader = StreamReader()
    reader.feed_data(data)
    parser = Frame.parse(reader.read_exact, mask=mask, max_size=None, extensions=[])
    try:
        next(parser)
    except StopIteration as done:
        frame: Frame = done.value
        return frame
    message = "websockets wanted more bytes than the frame has"
    raise AssertionError(message)


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize(("first", "opcode"), [(BINARY, Opcode.BINARY), (TEXT, Opcode.TEXT)])
def test_server_frames_parse_as_websockets_frames(length: int, first: int, opcode: Opcode) -> None:
    """An unmasked frame framed here is the frame websockets reads."""
    payload = bytes(range(256)) * (length // 256) + bytes(range(length % 256))
    data = frame_header(first, length, b"") + payload
    frame = _websockets_parse(data, mask=False)
    assert (frame.opcode, frame.fin, bytes(frame.data)) == (opcode, True, payload)


@pytest.mark.parametrize("length", LENGTHS)
def test_client_frames_parse_as_websockets_frames(length: int) -> None:
    """A masked frame framed here is the frame websockets' server reads (mask undone)."""
    payload = b"x" * length
    mask = MaskPool().take()
    data = frame_header(BINARY, length, mask) + apply_mask(payload, mask)
    frame = _websockets_parse(data, mask=True)
    assert bytes(frame.data) == payload


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("mask", [False, True])
def test_headers_of_websockets_frames_are_read(length: int, mask: bool) -> None:
    """parse_header reads websockets' headers: first byte, header size, length, masked."""
    data = Frame(Opcode.BINARY, b"y" * length).serialize(mask=mask, extensions=[])
    first, head, size, masked = parse_header(data, 0)
    assert (first, size, masked) == (BINARY, length, mask)
    assert head == len(data) - length
    if mask:
        assert apply_mask(data[head:], data[head - 4 : head]) == b"y" * length


@given(st.sampled_from(LENGTHS), st.booleans(), st.integers(min_value=0, max_value=20))
def test_a_header_is_incomplete_until_every_byte_is_there(
    length: int, mask: bool, offset: int
) -> None:
    """Every strict prefix of a header reads as incomplete (0); the whole one does not, at any
    offset in the buffer."""
    data = b"\x00" * offset + Frame(Opcode.BINARY, b"z" * length).serialize(
        mask=mask, extensions=[]
    )
    head = parse_header(data, offset)[1]
    assert head > 0
    for cut in range(offset, offset + head):
        assert parse_header(data[:cut], offset)[1] == 0


def test_control_and_fragment_frames_are_told_apart_by_their_first_byte() -> None:
    """Pings, closes, fragments and reserved bits do not read as a whole data frame."""
    others = [
        Frame(Opcode.PING, b"p"),
        Frame(Opcode.CLOSE, b"\x03\xe8"),
        Frame(Opcode.BINARY, b"part", fin=False),
        Frame(Opcode.CONT, b"rest"),
    ]
    encoded = [frame.serialize(mask=False, extensions=[]) for frame in others]
    encoded.append(bytes((0x80 | 0x40 | 0x2, 3)) + b"rsv")  # RSV1 set (websockets won't build it)
    for data in encoded:
        first = parse_header(data, 0)[0]
        assert first not in (BINARY, TEXT), data


def test_mask_pool_keys_are_fresh_and_bounded() -> None:
    """Keys are 4 bytes, come from the OS in 4 KiB draws, and do not repeat one draw's keys."""
    pool = MaskPool()
    keys = [pool.take() for _ in range(3000)]
    assert {len(key) for key in keys} == {4}
    assert len(set(keys)) > 2900  # 32-bit random keys: a handful of collisions at most
    assert len(pool._keys) == 4096
