"""Authentication at the bridge's opening handshake (``add_websocket(authenticate_handshake=True)``).

The handshake's credentials (:func:`~asap.transports.ws.handshake.credentials`: the
``Authorization`` header, or a browser's ``access_token``) are checked with the server's
:class:`~asap.core.middleware.BearerAuth` before the upgrade, so a peer without valid credentials
never holds a connection slot. The refusals are plain HTTP, as RFC 6750 §3 has them:

===  ==================================================================================
401  no credentials (``WWW-Authenticate: Bearer``) or a token the verifier refuses
     (``WWW-Authenticate: Bearer error="invalid_token"``); the ASAP client raises Unauthenticated
     with reason MISSING_CREDENTIALS or INVALID_TOKEN, as for a call refused for them
403  the verifier raised PermissionDenied (a valid token that may not call this agent)
429  a refused handshake past the peer's rate limit (each refusal costs the peer's anonymous
     principal a token, as a refused call does), with ``Retry-After``
503  the verifier failed with another AsapError (a token store that cannot be reached)
500  the verifier itself failed (logged)
===  ==================================================================================

The verifier is asynchronous; the connection runs it in a task and answers the handshake when it
returns, within :attr:`Limits.handshake_timeout <asap.protocol.limits.Limits.handshake_timeout>`
(the handshake deadline drops the connection otherwise).
"""

from __future__ import annotations

import http
import logging
import math
from collections.abc import Awaitable, Callable

from websockets.http11 import Request, Response
from websockets.server import ServerProtocol

from asap.core.middleware import BearerAuth
from asap.errors import AsapError, PermissionDenied, Unauthenticated
from asap.transports.ws.handshake import credentials


_log = logging.getLogger("asap.server")


Charge = Callable[[], Awaitable[float]]
"""Charges the peer one rate-limit token: 0.0, or the seconds until it may try again."""


async def check_credentials(
    auth: BearerAuth, ws: ServerProtocol, request: Request, charge: Charge | None = None
) -> Response | None:
    """The refusal for a handshake whose credentials do not verify; ``None`` to go on.

    ``charge`` is run for each refusal, so guessing tokens with handshakes is rate limited too.
    """
    try:
        await auth.authenticate(credentials(request))
    except Unauthenticated as error:
        retry_after = 0.0 if charge is None else await charge()
        if retry_after > 0:
            response = ws.reject(http.HTTPStatus.TOO_MANY_REQUESTS, "rate limit exceeded\n")
            response.headers["Retry-After"] = str(math.ceil(retry_after))
            return response
        response = ws.reject(http.HTTPStatus.UNAUTHORIZED, f"{error.message}\n")
        challenge = 'Bearer error="invalid_token"' if error.reason == "INVALID_TOKEN" else "Bearer"
        response.headers["WWW-Authenticate"] = challenge
        return response
    except PermissionDenied as error:
        return ws.reject(http.HTTPStatus.FORBIDDEN, f"{error.message}\n")
    except AsapError as error:
        return ws.reject(http.HTTPStatus.SERVICE_UNAVAILABLE, f"{error.message}\n")
    except Exception:  # noqa: BLE001 - a verifier's bug must still answer the handshake
        _log.exception("the token verifier failed on a handshake")
        return ws.reject(http.HTTPStatus.INTERNAL_SERVER_ERROR, "internal error\n")
    return None
