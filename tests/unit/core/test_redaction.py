"""redact_credentials: what CallContext keeps of the ``authorization`` metadata."""

from __future__ import annotations

from asap._typing import Metadata
from asap.core.context import REDACTED, redact_credentials


def test_every_authorization_value_is_redacted_and_the_first_kept() -> None:
    """Each value is replaced in place (order and count kept); the first one is returned."""
    metadata: Metadata = (
        ("x-a", "1"),
        ("authorization", "Bearer first"),
        ("authorization", "Bearer second"),
        ("x-b-bin", b"\x00"),
    )
    redacted, credentials = redact_credentials(metadata)
    assert redacted == (
        ("x-a", "1"),
        ("authorization", REDACTED),
        ("authorization", REDACTED),
        ("x-b-bin", b"\x00"),
    )
    assert credentials == "Bearer first"


def test_metadata_without_credentials_is_returned_as_is() -> None:
    """The common case allocates nothing."""
    metadata: Metadata = (("x-a", "1"),)
    redacted, credentials = redact_credentials(metadata)
    assert redacted is metadata
    assert credentials is None
