"""Call metadata (headers and trailers) on the WebSocket bridge, under gRPC's rules.

bridge.proto's ``MetadataEntry`` carries one value; keys are lowercase ASCII and may repeat; keys
ending in ``-bin`` carry binary values and all others text values, as in gRPC (PROTOCOL-HTTP2,
"Custom-Metadata"). Received metadata is held to what a gRPC peer could have sent, so a handler sees
the same metadata whichever transport carried the call.
"""

from __future__ import annotations

from collections.abc import Iterable

from asap.errors import MalformedFrame
from asap.v1 import bridge_pb2


Metadata = tuple[tuple[str, str | bytes], ...]
"""Metadata as ordered ``(key, value)`` pairs; keys ending in ``-bin`` carry bytes, others str."""

_KEY_CHARS = frozenset("0123456789abcdefghijklmnopqrstuvwxyz_.-")
_TEXT_CHARS = frozenset(chr(c) for c in range(0x20, 0x7F))


def metadata_from_entries(entries: Iterable[bridge_pb2.MetadataEntry]) -> Metadata:
    """Turn received metadata entries into pairs, enforcing gRPC's rules for them.

    Keys must be non-empty lowercase ``[0-9a-z_.-]``; keys ending in ``-bin`` carry binary values and
    all others printable-ASCII text (what a gRPC peer could send, so both transports agree).

    Raises:
        asap.errors.MalformedFrame: An entry breaks these rules.
    """
    pairs: list[tuple[str, str | bytes]] = []
    for entry in entries:
        key = entry.key
        if not key or not set(key) <= _KEY_CHARS:
            msg = "metadata keys must be lowercase [0-9a-z_.-]"
            raise MalformedFrame(msg)
        kind = entry.WhichOneof("value")
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
