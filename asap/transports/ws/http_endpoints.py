"""Plain HTTP endpoints on the bridge's listener, for probes that cannot speak the bridge."""

from __future__ import annotations

import http
from collections.abc import Callable

from websockets.http11 import Request, Response
from websockets.server import ServerProtocol

from asap.core.health import HealthState


HEALTH_PATH = "/healthz"
"""A plain HTTP GET here answers 200 SERVING or 503 NOT_SERVING (the state gRPC's health reports)."""


def health_endpoint(health: HealthState) -> Callable[[ServerProtocol, Request], Response]:
    """``GET /healthz``: 200 ``SERVING`` or 503 ``NOT_SERVING``, from the server's health state."""

    def answer(ws: ServerProtocol, request: Request) -> Response:
        if health.serving:
            return ws.reject(http.HTTPStatus.OK, "SERVING\n")
        return ws.reject(http.HTTPStatus.SERVICE_UNAVAILABLE, "NOT_SERVING\n")

    return answer
