"""The bearer token as a ``Sec-WebSocket-Protocol`` entry: how browsers authenticate a handshake.

Browsers cannot set headers on a WebSocket handshake, and a token in the URL ends up in access logs
and proxies. So a client offers ``asap.token.<base64url(token)>`` (unpadded, RFC 4648 §5) beside
the real subprotocols; the server reads the token from it and never selects or echoes it. An entry
is valid only in its canonical form, for a token of 1 to :data:`MAX_TOKEN_BYTES` visible ASCII
characters, and at most one may be offered.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable


TOKEN_ENTRY_PREFIX = "asap.token."  # noqa: S105 - a prefix, not a secret
"""What starts a token entry in ``Sec-WebSocket-Protocol``."""

MAX_TOKEN_BYTES = 4096
"""The longest token an entry may carry."""

_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")
_VISIBLE_ASCII = re.compile(rb"[\x21-\x7e]+")


class TokenEntryError(ValueError):
    """A malformed token entry, or more than one (the handshake is refused with 400)."""


def is_token_entry(entry: str) -> bool:
    """Whether a ``Sec-WebSocket-Protocol`` entry carries a token (so is no subprotocol)."""
    return entry.startswith(TOKEN_ENTRY_PREFIX)


def token_entry(token: str) -> str:
    """The entry that carries ``token``.

    Raises:
        TokenEntryError: ``token`` is empty, too long, or not visible ASCII.
    """
    raw = token.encode("utf-8")
    _check_token(raw)
    return TOKEN_ENTRY_PREFIX + base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def token_from_entries(entries: Iterable[str]) -> str | None:
    """The token the offered entries carry, or None when they carry none.

    Raises:
        TokenEntryError: An entry is malformed, or there is more than one.
    """
    found = [entry for entry in entries if is_token_entry(entry)]
    if not found:
        return None
    if len(found) > 1:
        message = f"more than one {TOKEN_ENTRY_PREFIX} entry in Sec-WebSocket-Protocol"
        raise TokenEntryError(message)
    encoded = found[0].removeprefix(TOKEN_ENTRY_PREFIX)
    malformed = f"malformed {TOKEN_ENTRY_PREFIX} entry: not unpadded base64url of a token"
    if not _BASE64URL.fullmatch(encoded) or len(encoded) % 4 == 1:
        raise TokenEntryError(malformed)
    # The pattern and the length admit only what decodes.
    raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != encoded:
        raise TokenEntryError(malformed)  # non-zero padding bits: one token, one spelling
    _check_token(raw)
    return raw.decode("ascii")


def _check_token(raw: bytes) -> None:
    if len(raw) > MAX_TOKEN_BYTES:
        message = f"the token is longer than {MAX_TOKEN_BYTES} bytes"
        raise TokenEntryError(message)
    if not _VISIBLE_ASCII.fullmatch(raw):
        message = "a token must be 1 or more visible ASCII characters"
        raise TokenEntryError(message)
