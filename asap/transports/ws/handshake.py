"""The bridge's opening-handshake policy: path, Origin, credentials and subprotocol, before any frame.

Each rule answers with a plain HTTP response and the connection never upgrades: another path gets
404, a second ``Authorization`` header 400, an Origin outside the allow-list (or any Origin when
there is none) 403, and a handshake that offers no supported subprotocol, or a malformed token
entry, 400 (from :func:`select_subprotocol`, through websockets' ``accept``). HTTP requests that are
not upgrades go to :mod:`asap.transports.ws.http_endpoints`.
"""

from __future__ import annotations

import functools
import http
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from websockets.exceptions import InvalidHeader, NegotiationError
from websockets.headers import parse_subprotocol
from websockets.http11 import Request, Response
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

from asap.protocol.frames import SUBPROTOCOLS
from asap.protocol.token_entry import (
    TOKEN_ENTRY_PREFIX,
    TokenEntryError,
    is_token_entry,
    token_from_entries,
)


_log = logging.getLogger("asap.server")


def select_subprotocol(ws: ServerProtocol, offered: Sequence[Subprotocol]) -> Subprotocol | None:
    """Pick the first of the server's subprotocols the client offers; refuse the handshake otherwise.

    The server's subprotocols are ``ws.available_subprotocols``: :data:`SUBPROTOCOLS`, or the ones
    the listener was restricted to (``add_websocket(subprotocols=...)``). A token entry
    (:mod:`asap.protocol.token_entry`) is never selected, echoed or shown in a refusal; a
    malformed one, or more than one, refuses the handshake (400).
    """
    try:
        token_from_entries(offered)
    except TokenEntryError as error:
        raise NegotiationError(str(error)) from None
    offered = [name for name in offered if not is_token_entry(name)]
    available = ws.available_subprotocols or [Subprotocol(name) for name in SUBPROTOCOLS]
    for name in available:
        if name in offered:
            return Subprotocol(name)
    wanted = " or ".join(available)
    if not offered:
        message = f"no subprotocol offered; offer {wanted} in Sec-WebSocket-Protocol"
        raise NegotiationError(message)
    shown = ", ".join(offered)[:100]
    message = f"unsupported subprotocol {shown}; offer {wanted}"
    raise NegotiationError(message)


def credentials(request: Request) -> str | None:
    """The handshake's credentials as an ``authorization`` value, or None; never raises.

    In order: the ``Authorization`` header; ``Bearer <token>`` from a token entry in
    ``Sec-WebSocket-Protocol`` (what browsers send); ``Bearer <access_token query parameter>``,
    deprecated (a token in the URL ends up in logs; a warning is logged once). A malformed token
    entry counts as none here: :func:`select_subprotocol` refuses the handshake for it.
    """
    headers = request.headers.get_all("Authorization")  # more than one is refused by the policy
    if headers and headers[0]:
        return headers[0]
    try:
        offered = [
            entry
            for value in request.headers.get_all("Sec-WebSocket-Protocol")
            for entry in parse_subprotocol(value)
        ]
        token = token_from_entries(offered)
    except (InvalidHeader, TokenEntryError):
        token = None
    if token is not None:
        return f"Bearer {token}"
    tokens = parse_qs(urlsplit(request.path).query).get("access_token")
    if tokens and tokens[0]:
        _warn_access_token()
        return f"Bearer {tokens[0]}"
    return None


@functools.cache
def _warn_access_token() -> None:
    """Say once per process that a client still sends its token in the URL."""
    _log.warning(
        "a WebSocket client sent its token in the access_token query parameter, which is "
        "deprecated: the URL (and the token) ends up in access logs; send it in the Authorization "
        "header or as a %s<base64url> Sec-WebSocket-Protocol entry",
        TOKEN_ENTRY_PREFIX,
    )


HttpEndpoint = Callable[[ServerProtocol, Request], Response]
"""Answers a plain HTTP GET (not an upgrade) at one path."""


@dataclass(frozen=True, slots=True)
class HandshakePolicy:
    """What a handshake must satisfy before the bridge upgrades it.

    Args:
        path: The bridge's URL path.
        allowed_origins: Origins a browser may connect from; None refuses every handshake that
            carries an Origin (browsers always send one; other clients send none).
        endpoints: Plain HTTP endpoints by path (``/healthz``), served without an upgrade.
    """

    path: str
    allowed_origins: frozenset[str] | None
    endpoints: dict[str, HttpEndpoint]

    def check(self, ws: ServerProtocol, request: Request) -> Response | None:
        """The refusal (or plain HTTP answer) for ``request``; ``None`` to go on with the upgrade."""
        path = urlsplit(request.path).path
        endpoint = self.endpoints.get(path)
        if endpoint is not None and "Upgrade" not in request.headers:
            return endpoint(ws, request)
        if path != self.path:
            text = f"no WebSocket bridge at this path; use {self.path}\n"
            return ws.reject(http.HTTPStatus.NOT_FOUND, text)
        if len(request.headers.get_all("Authorization")) > 1:
            return ws.reject(http.HTTPStatus.BAD_REQUEST, "more than one Authorization header\n")
        origins = request.headers.get_all("Origin")
        if origins and (
            self.allowed_origins is None  # secure by default: no browser page may drive the bridge
            or len(origins) > 1
            or origins[0] not in self.allowed_origins
        ):
            return ws.reject(http.HTTPStatus.FORBIDDEN, "origin not allowed\n")
        return None
