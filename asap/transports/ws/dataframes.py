"""WebSocket data frames on the bridge's hot path, without websockets' per-frame objects (RFC 6455 §5.2).

The bridge's I/O layer (:mod:`asap.transports.ws.pump`) runs websockets' sans-I/O protocol for the
opening handshake, control frames, fragmented messages and the closing handshake. One kind of frame is
most of the traffic: a whole (FIN set), unextended binary or text message. This module encodes and
decodes exactly that kind, so a call does not build a ``Frame``, run a generator-based parser and
draw a masking key from the OS per message. Everything else about a frame — opcode, reserved bits,
masking, size — is only *read* here, to decide that the frame is not of that kind and must be handed
whole to websockets, which answers it as the RFC requires (1002, 1009, a pong, a close).

No I/O: functions over bytes, and a pool of masking keys.
"""

from __future__ import annotations

import os
from typing import Final

from websockets.utils import apply_mask as _apply_mask_py


try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - the C extension ships in websockets' wheels
    apply_mask = _apply_mask_py

__all__ = [
    "BINARY",
    "TEXT",
    "MaskPool",
    "apply_mask",
    "frame_header",
    "parse_header",
]

BINARY: Final = 0x82
"""First byte of a whole binary message: FIN, no reserved bits, opcode 2."""
TEXT: Final = 0x81
"""First byte of a whole text message: FIN, no reserved bits, opcode 1."""

_MASKED: Final = 0x80
_MASK_POOL_BYTES: Final = 4096
"""Masking keys drawn from the OS at a time (1,024 frames); the pool's whole memory."""


def frame_header(first: int, length: int, mask: bytes) -> bytes:
    """The header of a frame whose first byte is ``first`` and payload ``length`` bytes.

    ``mask`` is the 4-byte masking key a client sends (appended to the header), or ``b""``.
    """
    flag = _MASKED if mask else 0
    if length < 126:
        head = bytes((first, flag | length))
    elif length < 0x10000:
        head = bytes((first, flag | 126)) + length.to_bytes(2, "big")
    else:
        head = bytes((first, flag | 127)) + length.to_bytes(8, "big")
    return head + mask if mask else head


def parse_header(data: bytes, pos: int) -> tuple[int, int, int, bool]:
    """Read the frame header at ``data[pos:]``: ``(first byte, header length, payload length, masked)``.

    The header length counts the masking key. It is 0 when ``data`` does not yet hold the whole
    header (at most 14 bytes).
    """
    available = len(data) - pos
    if available < 2:
        return 0, 0, 0, False
    first = data[pos]
    second = data[pos + 1]
    masked = (second & _MASKED) != 0
    length = second & 0x7F
    head = 2
    if length == 126:
        head = 4
        if available < head:
            return 0, 0, 0, False
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
    elif length == 127:
        head = 10
        if available < head:
            return 0, 0, 0, False
        length = int.from_bytes(data[pos + 2 : pos + 10], "big")
    if masked:
        head += 4
        if available < head:
            return 0, 0, 0, False
    return first, head, length, masked


class MaskPool:
    """Masking keys for a client's frames, drawn from ``os.urandom`` 1,024 at a time.

    RFC 6455 §5.3 asks for keys a script cannot predict; they still come from the OS's CSPRNG, only
    not with one system call per frame.
    """

    __slots__ = ("_keys", "_next")

    def __init__(self) -> None:
        self._keys = b""
        self._next = 0

    def take(self) -> bytes:
        """The next unused 4-byte masking key."""
        start = self._next
        if start >= len(self._keys):
            self._keys = os.urandom(_MASK_POOL_BYTES)
            start = 0
        self._next = start + 4
        return self._keys[start : start + 4]
