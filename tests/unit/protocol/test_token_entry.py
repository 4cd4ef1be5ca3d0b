"""The ``asap.token.<base64url>`` Sec-WebSocket-Protocol entry (sans-I/O)."""

from __future__ import annotations

import pytest

from asap.protocol.token_entry import (
    MAX_TOKEN_BYTES,
    TokenEntryError,
    is_token_entry,
    token_entry,
    token_from_entries,
)


@pytest.mark.parametrize("token", ["a", "ab", "abc", "s3cr3t.token_~+/=", "t" * MAX_TOKEN_BYTES])
def test_round_trip_unpadded(token: str) -> None:
    """Every visible-ASCII token survives; the entry is unpadded base64url (an HTTP token)."""
    entry = token_entry(token)
    assert is_token_entry(entry)
    assert "=" not in entry
    assert "+" not in entry
    assert "/" not in entry
    assert token_from_entries(["asap.v1.1.proto", entry]) == token


def test_no_entry_is_no_token() -> None:
    """Real subprotocols only: no token."""
    assert token_from_entries(["asap.v1.1.proto", "asap.v1.proto"]) is None


@pytest.mark.parametrize("token", ["", "has space", "tab\t", "é", "t" * (MAX_TOKEN_BYTES + 1)])
def test_tokens_an_entry_cannot_carry(token: str) -> None:
    """Empty, whitespace, control, non-ASCII or too long: refused on both sides."""
    with pytest.raises(TokenEntryError):
        token_entry(token)


@pytest.mark.parametrize(
    "entries",
    [
        ["asap.token."],
        ["asap.token.a"],
        ["asap.token.YR"],
        ["asap.token.YQ=="],
        ["asap.token.Y+"],
        [token_entry("a"), token_entry("b")],
    ],
)
def test_malformed_entries(entries: list[str]) -> None:
    """Not canonical unpadded base64url, or more than one entry."""
    with pytest.raises(TokenEntryError):
        token_from_entries(entries)
