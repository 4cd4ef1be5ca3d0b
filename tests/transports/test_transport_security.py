"""TLS, mutual TLS and the plaintext rule, the same on every transport (grpc, ws-proto, ws-json)."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import grpc
import pytest
import trustme

from asap import errors
from asap.core.method import method
from asap.transports.base import CallOptions
from asap.v1 import agent_service_pb2


if TYPE_CHECKING:
    from tests.conftest import Transport
    from tests.transports.conftest import Dial, Kit, Serve


NO_OPTIONS = CallOptions()
SEND = method("Send")


def remote_url(transport: Transport) -> str:
    """A plaintext URL of the transport to a host that is not loopback."""
    return "ws://example.com/asap/v1/ws" if transport.websocket else "grpc://example.com:50051"


@pytest.mark.asyncio
async def test_tls_serves_calls_with_a_trusted_certificate(
    serve: Serve, dial: Dial, ca: trustme.CA, kit: Kit
) -> None:
    """With ServerTLS the endpoint is grpcs:// or wss:// and a client trusting the CA gets answers."""
    server = await serve(tls=kit.server_tls(ca))
    url = kit.url(server)
    assert urlsplit(url).scheme in {"grpcs", "wss"}
    assert urlsplit(url).hostname == "127.0.0.1"
    channel = dial(url, tls=kit.client_tls(ca))
    assert channel.url == url
    reply = await channel.unary(SEND, kit.send_request("echo", n=1), NO_OPTIONS)
    assert isinstance(reply.message, agent_service_pb2.SendResponse)


@pytest.mark.asyncio
async def test_tls_refuses_a_client_that_does_not_trust_the_server(
    serve: Serve, dial: Dial, ca: trustme.CA, kit: Kit
) -> None:
    """A client trusting another CA fails the handshake: Unavailable, naming the certificate error."""
    server = await serve(tls=kit.server_tls(ca))
    channel = dial(kit.url(server), tls=kit.client_tls(trustme.CA()))
    with pytest.raises(errors.Unavailable, match="CERTIFICATE_VERIFY_FAILED"):
        await channel.unary(SEND, kit.send_request("echo"), NO_OPTIONS)


@pytest.mark.asyncio
async def test_mutual_tls_requires_a_client_certificate(
    serve: Serve, dial: Dial, ca: trustme.CA, kit: Kit
) -> None:
    """With client_ca set, a client without a certificate fails and one with a certificate works."""
    server = await serve(tls=kit.server_tls(ca, mutual=True))
    anonymous = dial(kit.url(server), tls=kit.client_tls(ca))
    with pytest.raises(errors.Unavailable):
        await anonymous.unary(SEND, kit.send_request("echo"), NO_OPTIONS)
    authenticated = dial(kit.url(server), tls=kit.client_tls(ca, with_cert=True))
    reply = await authenticated.unary(SEND, kit.send_request("echo"), NO_OPTIONS)
    assert isinstance(reply.message, agent_service_pb2.SendResponse)


@pytest.mark.asyncio
async def test_plaintext_to_a_remote_host_is_refused_before_connecting(
    transport: Transport, dial: Dial, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Plaintext to a non-loopback host raises InsecureTransportError; no channel, no task."""

    def no_channel(*args: object, **kwargs: object) -> grpc.aio.Channel:
        pytest.fail("a gRPC channel was created")

    monkeypatch.setattr(grpc.aio, "insecure_channel", no_channel)
    before = asyncio.all_tasks()
    with pytest.raises(errors.InsecureTransportError):
        dial(remote_url(transport))
    assert asyncio.all_tasks() == before


@pytest.mark.asyncio
async def test_plaintext_to_loopback_logs_a_warning(
    serve: Serve, dial: Dial, kit: Kit, caplog: pytest.LogCaptureFixture
) -> None:
    """Plaintext to loopback is allowed, with a WARNING log record (not a Python warning)."""
    server = await serve()
    with caplog.at_level(logging.WARNING, logger="asap.client"):
        channel = dial(kit.url(server))
    assert any("plaintext" in record.getMessage() for record in caplog.records)
    reply = await channel.unary(SEND, kit.send_request("echo"), NO_OPTIONS)
    assert isinstance(reply.message, agent_service_pb2.SendResponse)


@pytest.mark.asyncio
async def test_allow_insecure_permits_plaintext_to_a_remote_host(
    transport: Transport, dial: Dial
) -> None:
    """allow_insecure=True permits plaintext to a non-loopback host (nothing connects yet)."""
    url = remote_url(transport)
    channel = dial(url, allow_insecure=True)
    assert channel.url == url
    await channel.close()
