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


METRICS_PATH = "/metrics"
"""Where a server with metrics answers a plain HTTP GET with its exposition (Prometheus text)."""

Exposition = Callable[[], tuple[bytes, str]]
"""Renders metrics now: the body and its Content-Type (the transport imports no metrics library)."""


def metrics_endpoint(render: Exposition) -> Callable[[ServerProtocol, Request], Response]:
    """``GET /metrics``: 200 with what ``render`` returns, as ``render`` says it is typed."""

    def answer(ws: ServerProtocol, request: Request) -> Response:
        body, content_type = render()
        response = ws.reject(http.HTTPStatus.OK, "")
        # websockets' Headers keep every value set: replace the plain-text ones.
        del response.headers["Content-Length"]
        del response.headers["Content-Type"]
        response.headers["Content-Length"] = str(len(body))
        response.headers["Content-Type"] = content_type
        response.body = body
        return response

    return answer
