"""Unit tests for asap.protocol.metadata: gRPC's metadata rules on the bridge."""

from __future__ import annotations

import pytest

from asap.errors import MalformedFrame
from asap.protocol.metadata import metadata_from_entries, metadata_to_entries
from asap.v1 import bridge_pb2


def test_metadata_from_entries() -> None:
    """Valid entries become (key, str | bytes) pairs in order, repeats kept."""
    entries = [
        bridge_pb2.MetadataEntry(key="a", text="1"),
        bridge_pb2.MetadataEntry(key="x-bin", binary=b"\x00"),
        bridge_pb2.MetadataEntry(key="a", text="2"),
        bridge_pb2.MetadataEntry(key="empty-bin"),
    ]
    assert metadata_from_entries(entries) == (
        ("a", "1"),
        ("x-bin", b"\x00"),
        ("a", "2"),
        ("empty-bin", b""),
    )


@pytest.mark.parametrize(
    "entry",
    [
        bridge_pb2.MetadataEntry(key="", text="v"),
        bridge_pb2.MetadataEntry(key="Upper", text="v"),
        bridge_pb2.MetadataEntry(key="sp ace", text="v"),
        bridge_pb2.MetadataEntry(key="x-bin", text="v"),
        bridge_pb2.MetadataEntry(key="x", binary=b"v"),
        bridge_pb2.MetadataEntry(key="x", text="line\nbreak"),
        bridge_pb2.MetadataEntry(key="x", text="é"),
    ],
)
def test_metadata_from_entries_rejects(entry: bridge_pb2.MetadataEntry) -> None:
    """Entries gRPC could not carry raise MalformedFrame."""
    with pytest.raises(MalformedFrame):
        metadata_from_entries([entry])


def test_metadata_to_entries() -> None:
    """Pairs become text or binary entries by value type."""
    entries = metadata_to_entries([("a", "1"), ("b-bin", b"2")])
    assert entries == [
        bridge_pb2.MetadataEntry(key="a", text="1"),
        bridge_pb2.MetadataEntry(key="b-bin", binary=b"2"),
    ]


@pytest.mark.parametrize("pair", [("a-bin", "text"), ("a", b"bytes")])
def test_metadata_to_entries_rejects_mismatch(pair: tuple[str, str | bytes]) -> None:
    """A value type that does not match the key's -bin suffix raises ValueError."""
    with pytest.raises(ValueError, match="-bin"):
        metadata_to_entries([pair])
