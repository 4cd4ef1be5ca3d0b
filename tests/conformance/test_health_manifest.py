"""GetManifest and serving state are the same on every transport.

Health over the wire is gRPC's standard ``grpc.health.v1.Health`` service, which only exists on the
gRPC listener; it is tested with the gRPC transport (``tests/transports/grpc``). Here: the manifest,
and the server's transport-independent serving state.
"""

from __future__ import annotations

import asyncio

import pytest

from asap import errors
from asap.v1 import manifest_pb2
from tests.conformance._service import SKILLS, Harness, as_dict, envelope


pytestmark = pytest.mark.asyncio


async def test_manifest_lists_the_skills(harness: Harness) -> None:
    """The manifest names the agent and lists every registered skill, in order, with descriptions."""
    manifest = await harness.client.get_manifest()
    assert manifest.id == harness.agent_id
    assert manifest.name == "conformance"
    assert [skill.id for skill in manifest.skills] == list(SKILLS)
    assert all(skill.description for skill in manifest.skills)


async def test_manifest_lists_the_server_endpoints(harness: Harness) -> None:
    """The manifest lists the server's endpoints, including the URL the client used."""
    manifest = await harness.client.get_manifest()
    assert list(manifest.endpoints) == harness.server.endpoints()
    assert harness.url in [endpoint.url for endpoint in manifest.endpoints]


async def test_manifest_capabilities(harness: Harness) -> None:
    """The manifest advertises streaming, acks and deduplication, and no auth when there is none."""
    manifest = await harness.client.get_manifest()
    assert manifest.capabilities.streaming
    assert manifest.capabilities.acks
    assert manifest.capabilities.deduplication
    assert manifest.capabilities.asap_version
    assert list(manifest.auth_schemes) == []
    assert isinstance(manifest, manifest_pb2.Manifest)


async def test_server_reports_serving_until_stopped(harness: Harness) -> None:
    """The server's health is serving while it runs and not serving once stop() began."""
    assert harness.server.health.serving
    await harness.server.stop(0)
    assert not harness.server.health.serving


async def test_draining_server_refuses_new_calls_with_shutting_down(harness: Harness) -> None:
    """While draining, a new call fails ShuttingDown (UNAVAILABLE) after its drain retries; not run."""
    harness.server.dispatcher.draining = True
    with pytest.raises(errors.ShuttingDown) as caught:
        await harness.client.send(envelope("count", {"gate": "never"}))
    assert caught.value.code == errors.Code.UNAVAILABLE
    assert caught.value.reason == "SHUTTING_DOWN"
    assert not harness.probe.event("entered:never").is_set()


async def test_stop_lets_calls_in_flight_finish(harness: Harness) -> None:
    """stop(grace) waits for calls already running: they complete with their answer."""
    draining = asyncio.Event()
    harness.server.health.subscribe(lambda serving: None if serving else draining.set())
    call = asyncio.create_task(harness.client.send(envelope("park", {"key": "drain"})))
    await harness.probe.entered("drain")
    stopping = asyncio.create_task(harness.server.stop(5.0))
    await draining.wait()
    harness.probe.release("drain")
    response = await call
    assert as_dict(response.envelope.task_response.result) == {"key": "drain"}
    await stopping


async def test_new_call_while_draining_is_shutting_down(harness: Harness) -> None:
    """Once stop(grace) began, a new call to that one server fails Unavailable and is not run."""
    # ShuttingDown from the Dispatcher, or, once the listener told the client to go away, the
    # failure to reach a server that no longer accepts connections: both UNAVAILABLE.
    draining = asyncio.Event()
    harness.server.health.subscribe(lambda serving: None if serving else draining.set())
    call = asyncio.create_task(harness.client.send(envelope("park", {"key": "drain"})))
    await harness.probe.entered("drain")
    stopping = asyncio.create_task(harness.server.stop(5.0))
    await draining.wait()
    # One attempt each: the client's retries with backoff (right for a caller with other replicas)
    # could otherwise outlast the grace period and fail the parked call along with the server.
    once = harness.connect(retries=1)
    refused = asyncio.create_task(once.send(envelope("count", {"gate": "never"})))
    # The parked call finishes beside the refusal, not after it: on gRPC a new connection that
    # races the listener's closure has its call held in grpc core's pending queue until the grace
    # ends (docs/semantics.md, known differences), and the end of the grace cancels the parked
    # call too.
    harness.probe.release("drain")
    response = await call
    assert as_dict(response.envelope.task_response.result) == {"key": "drain"}
    with pytest.raises(errors.Unavailable):
        await refused
    # Again, now that the client may already know the server is going away (GOAWAY, 1001).
    with pytest.raises(errors.Unavailable):
        await once.send(envelope("count", {"gate": "never"}))
    await stopping
    assert not harness.probe.event("entered:never").is_set()


async def test_stop_without_grace_cancels_calls_in_flight(harness: Harness) -> None:
    """stop(0) cancels running handlers; their callers fail with an Unavailable error."""
    client = harness.connect(retries=1)
    call = asyncio.create_task(client.send(envelope("park", {"key": "cut"})))
    await harness.probe.entered("cut")
    await harness.server.stop(0)
    await harness.probe.cancelled("cut")
    with pytest.raises(errors.Unavailable):
        await call


async def test_standard_health_check_reports_serving(harness: Harness) -> None:
    """The standard health Check answers SERVING for the server and for AgentService."""
    assert await harness.client.check_health()
    assert await harness.client.check_health("asap.v1.AgentService")


async def test_health_of_an_unknown_service_is_not_found(harness: Harness) -> None:
    """A health Check for a service the server does not report on fails with NotFound."""
    with pytest.raises(errors.NotFound) as caught:
        await harness.client.check_health("no.such.Service")
    assert caught.value.code == errors.Code.NOT_FOUND
