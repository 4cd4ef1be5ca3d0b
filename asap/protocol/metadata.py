"""Call metadata (headers and trailers) on the WebSocket bridge, under gRPC's rules.

bridge.proto's ``MetadataEntry`` carries one value; keys are lowercase ASCII and may repeat; keys
ending in ``-bin`` carry binary values and all others text values, as in gRPC (PROTOCOL-HTTP2,
"Custom-Metadata"). Received metadata is held to what a gRPC peer could have sent, so a handler sees
the same metadata whichever transport carried the call.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from asap.errors import MalformedFrame, ResourceExhausted
from asap.v1 import bridge_pb2


Metadata = tuple[tuple[str, str | bytes], ...]
"""Metadata as ordered ``(key, value)`` pairs; keys ending in ``-bin`` carry bytes, others str."""

_KEY_CHARS: Final = frozenset("0123456789abcdefghijklmnopqrstuvwxyz_.-")
_TEXT_CHARS: Final = frozenset(chr(c) for c in range(0x20, 0x7F))


ENTRY_OVERHEAD_BYTES: Final = 32
"""What HTTP/2 adds to each header's key and value when it counts a header list (RFC 7541 §4.1)."""

RESERVED_PREFIX: Final = "grpc-"
"""Keys gRPC reserves for itself; a call may not carry them (gRPC clients refuse to send them)."""


def entry_size(key: str, value: str | bytes) -> int:
    """The size HTTP/2 counts for one entry; a ``-bin`` value as the base64 text gRPC sends."""
    length = (len(value) * 4 + 2) // 3 if isinstance(value, bytes) else len(value)
    return len(key) + length + ENTRY_OVERHEAD_BYTES


def metadata_from_entries(
    entries: Iterable[bridge_pb2.MetadataEntry], *, max_bytes: int | None = None
) -> Metadata:
    """Turn received metadata entries into pairs, enforcing gRPC's rules for them.

    Keys must be non-empty lowercase ``[0-9a-z_.-]`` and not start with the reserved ``grpc-``;
    keys ending in ``-bin`` carry binary values and all others printable-ASCII text (what a gRPC
    peer could send, so both transports agree). With ``max_bytes``, the entries may add up to at
    most that many bytes as :func:`entry_size` counts them; checking stops at the first entry past
    it, so a flood of entries costs no more than the limit.

    Raises:
        asap.errors.MalformedFrame: An entry breaks these rules.
        asap.errors.ResourceExhausted: The metadata is over ``max_bytes`` (gRPC's answer to
            metadata over its limit).
    """
    pairs: list[tuple[str, str | bytes]] = []
    total = 0
    for entry in entries:
        key = entry.key
        if not key or not set(key) <= _KEY_CHARS:
            msg = "metadata keys must be lowercase [0-9a-z_.-]"
            raise MalformedFrame(msg)
        if key.startswith(RESERVED_PREFIX):
            msg = f"metadata key {key[:40]} is reserved (grpc-)"
            raise MalformedFrame(msg)
        kind = entry.WhichOneof("value")
        if max_bytes is not None:
            total += entry_size(key, entry.binary if kind == "binary" else entry.text)
            if total > max_bytes:
                msg = f"received metadata size exceeds hard limit ({total}+ vs. {max_bytes})"
                raise ResourceExhausted(msg)
        if key.endswith("-bin"):
            if kind == "text":
                msg = f"metadata key {key} needs a binary value"
                raise MalformedFrame(msg)
            pairs.append((key, entry.binary))
        else:
            if kind == "binary" or not set(entry.text) <= _TEXT_CHARS:
                msg = f"metadata key {key} needs a printable ASCII text value"
                raise MalformedFrame(msg)
            pairs.append((key, entry.text))
    return tuple(pairs)


def metadata_to_entries(
    metadata: Iterable[tuple[str, str | bytes]],
) -> list[bridge_pb2.MetadataEntry]:
    """Turn metadata pairs into entries to send (str values as text, bytes as binary).

    Raises:
        ValueError: A ``-bin`` key with a str value or another key with a bytes value.
    """
    entries: list[bridge_pb2.MetadataEntry] = []
    for key, value in metadata:
        binary_key = key.endswith("-bin")
        if isinstance(value, bytes) != binary_key:
            msg = f"metadata key {key!r}: '-bin' keys take bytes and all others str"
            raise ValueError(msg)
        if isinstance(value, bytes):
            entries.append(bridge_pb2.MetadataEntry(key=key, binary=value))
        else:
            entries.append(bridge_pb2.MetadataEntry(key=key, text=value))
    return entries
