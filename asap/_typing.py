"""Type aliases shared across ASAP (no logic)."""

from __future__ import annotations

from typing import TypeAlias


MetadataValue: TypeAlias = str | bytes
"""A metadata value: text, or bytes for keys ending in ``-bin`` (as in gRPC)."""

Metadata: TypeAlias = tuple[tuple[str, MetadataValue], ...]
"""Request or response metadata: ordered ``(key, value)`` pairs; keys are lowercase and may repeat."""
