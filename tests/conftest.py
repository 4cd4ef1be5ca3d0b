"""Fixtures shared by the whole test tree: the transport-parametrized conformance harness and a
task-leak guard for every async test.

The ``harness`` fixtures start a real :class:`~asap.server.Server` on 127.0.0.1 (port 0) serving the
conformance agent (``tests/conformance/_service.py``) and connect a real client with
:func:`asap.connect`, once per transport: ``grpc`` (``grpc://``), ``ws-proto`` (``ws://`` with the
``asap.v1.proto`` subprotocol) and ``ws-json`` (``ws://`` with ``asap.v1.json``). Each test gets a
fresh server, probe and clients, so tests cannot interfere; starting one takes a few milliseconds.
The transport is known only here: test bodies see a :class:`Harness` and the public API.
"""

from __future__ import annotations

import asyncio
import inspect
import os
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass

import pytest
import pytest_asyncio

from asap import BearerAuth, Client, Limits, RetryPolicy, Server, connect
from asap.core.dedupe import DedupeStore
from asap.interceptors import ClientInterceptor, Interceptor
from asap.protocol.frames import SUBPROTOCOL_JSON, SUBPROTOCOL_PROTO
from asap.server import MetricsExporter
from asap.stores.redis import RedisDedupeStore
from scripts.compile import is_compiled
from tests.conformance._service import (
    AGENT_ID,
    GOOD_TOKEN,
    OTHER_SUBJECT,
    OTHER_TOKEN,
    TESTER,
    Harness,
    HarnessFactory,
    Probe,
    make_agent,
)
from tests.redis_server import RedisServer, unique_prefix


def pytest_configure(config: pytest.Config) -> None:
    """With ``ASAP_EXPECT_COMPILED=1`` (``make pytest-compiled``), refuse to run on the sources.

    A PYTHONPATH that missed the mypyc tree would otherwise test the interpreted modules twice
    and call it a test of the compiled ones.
    """
    if os.environ.get("ASAP_EXPECT_COMPILED") == "1" and not is_compiled():
        message = "ASAP_EXPECT_COMPILED=1 but asap was imported from its sources"
        raise pytest.UsageError(message)


@dataclass(frozen=True, slots=True)
class Transport:
    """How a harness serves and connects: which listener, and which subprotocol for the bridge."""

    id: str
    websocket: bool
    subprotocol: str = SUBPROTOCOL_PROTO


TRANSPORTS = (
    Transport("grpc", websocket=False),
    Transport("ws-proto", websocket=True, subprotocol=SUBPROTOCOL_PROTO),
    Transport("ws-json", websocket=True, subprotocol=SUBPROTOCOL_JSON),
)
"""Every transport the conformance suite runs on."""

RATE_LIMITS = Limits(rate_limit_per_second=0.1, rate_limit_burst=2)
"""The ``rate_limited_harness`` limits: two calls back to back, then one every ten seconds."""
LEAK_GRACE = 2.0
"""Seconds a task still running after teardown gets to finish before the test fails as leaking."""
SMALL_MESSAGES = Limits(max_message_bytes=16 * 1024)
"""The ``small_message_harness`` limits: 16 KiB messages."""


@pytest.fixture(params=TRANSPORTS, ids=[transport.id for transport in TRANSPORTS])
def transport(request: pytest.FixtureRequest) -> Transport:
    """The transport a conformance test runs on (parametrizes every harness fixture)."""
    param: Transport = request.param
    return param


STORES = ("memory", "redis")
"""The dedupe stores the delivery conformance cases run against (``store_kind``)."""


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real redis-server for the whole session (tests keep apart by key prefix)."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def store_kind(request: pytest.FixtureRequest) -> str:
    """Which dedupe store the harness's server uses: "memory" unless a module parametrizes it.

    Delivery conformance modules parametrize it with :data:`STORES` (``indirect=True``).
    """
    kind: str = getattr(request, "param", "memory")
    return kind


@pytest_asyncio.fixture
async def make_harness(
    transport: Transport, store_kind: str, request: pytest.FixtureRequest
) -> AsyncIterator[HarnessFactory]:
    """Start harnesses with a given server configuration; everything is closed at teardown.

    The factory takes ``limits``, ``auth``, ``bind_sender``, ``interceptors``, ``metrics`` and
    ``access_log`` (as :class:`~asap.server.Server`), and ``token`` and ``client_interceptors`` for
    the harness's own client. Servers use the ``store_kind`` dedupe store.
    """
    servers: list[Server] = []
    clients: list[Client] = []
    stores: list[RedisDedupeStore] = []

    def new_store() -> DedupeStore | None:
        if store_kind == "memory":
            return None
        redis: RedisServer = request.getfixturevalue("redis_server")
        store = RedisDedupeStore.from_url(redis.url, prefix=unique_prefix())
        stores.append(store)
        return store

    async def start(
        *,
        limits: Limits | None = None,
        auth: BearerAuth | None = None,
        bind_sender: bool | None = None,
        token: str | None = None,
        interceptors: Sequence[Interceptor] = (),
        client_interceptors: Sequence[ClientInterceptor] = (),
        metrics: MetricsExporter | None = None,
        metrics_address: str | None = None,
        access_log: bool = False,
    ) -> Harness:
        probe = Probe()
        server = Server(
            make_agent(probe),
            limits=limits,
            auth=auth,
            bind_sender=bind_sender,
            dedupe=new_store(),
            interceptors=interceptors,
            metrics=metrics,
            metrics_address=metrics_address,
            access_log=access_log,
        )
        if transport.websocket:
            server.add_websocket("127.0.0.1:0")
        else:
            server.add_grpc("127.0.0.1:0")
        servers.append(server)
        await server.start()
        url = server.endpoints()[0].url

        def connect_client(
            *,
            sender: str = TESTER,
            token: str | None = None,
            timeout: float | None = 30.0,
            retries: int | None = None,
            interceptors: Sequence[ClientInterceptor] = (),
        ) -> Client:
            retry = None if retries is None else RetryPolicy(max_attempts=retries)
            client = connect(
                url,
                sender=sender,
                token=token,
                timeout=timeout,
                subprotocol=transport.subprotocol,
                retry=retry,
                interceptors=interceptors,
            )
            clients.append(client)
            return client

        return Harness(
            client=connect_client(token=token, interceptors=client_interceptors),
            probe=probe,
            server=server,
            agent_id=AGENT_ID,
            url=url,
            _connect=connect_client,
        )

    yield start
    for client in clients:
        await client.close()
    for server in servers:
        await server.stop(0)
    for store in stores:
        await store.aclose()


@pytest_asyncio.fixture
async def harness(make_harness: HarnessFactory) -> Harness:
    """A conformance server with default settings and a client, on each transport."""
    return await make_harness()


@pytest_asyncio.fixture
async def auth_harness(make_harness: HarnessFactory) -> Harness:
    """A server requiring bearer tokens and binding senders to identities; the client has none."""
    auth = BearerAuth.static({GOOD_TOKEN: TESTER, OTHER_TOKEN: OTHER_SUBJECT})
    return await make_harness(auth=auth, bind_sender=True)


@pytest_asyncio.fixture
async def rate_limited_harness(make_harness: HarnessFactory) -> Harness:
    """A server with a tiny rate limit (:data:`RATE_LIMITS`)."""
    return await make_harness(limits=RATE_LIMITS)


@pytest_asyncio.fixture
async def small_message_harness(make_harness: HarnessFactory) -> Harness:
    """A server with a small maximum message size (:data:`SMALL_MESSAGES`)."""
    return await make_harness(limits=SMALL_MESSAGES)


@pytest_asyncio.fixture(autouse=True)
async def _no_leaked_tasks(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """Fail an async test that leaves an asyncio task running after its fixtures are torn down.

    Autouse fixtures are set up first and torn down last, so this runs after the harness closed its
    clients and stopped its servers (which await their own tasks): a task still pending then, and
    not finishing within :data:`LEAK_GRACE`, was started by the test or the library and leaked.
    """
    if not inspect.iscoroutinefunction(getattr(request.node, "function", None)):
        yield
        return
    # pytest-asyncio runs a fixture's setup and teardown in two different tasks: exclude both.
    before = asyncio.all_tasks()
    yield
    current = asyncio.current_task()
    leaked = [task for task in asyncio.all_tasks() if task is not current and task not in before]
    if not leaked:
        return
    # Tasks that are merely finishing end within LEAK_GRACE (grpc.aio's per-RPC tasks can outlive
    # Server.stop() by a few loop turns); this waits on the tasks themselves, it does not sleep.
    _, pending = await asyncio.wait(leaked, timeout=LEAK_GRACE)
    if pending:
        names = ", ".join(sorted(f"{task.get_name()} {task.get_coro()!r}" for task in pending))
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        pytest.fail(f"the test left {len(pending)} asyncio task(s) running: {names}")
