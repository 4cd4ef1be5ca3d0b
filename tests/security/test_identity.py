"""Identities, the same on every transport (issue 11 item 4): client certificates become
``ctx.identity``, ``grpcs://`` and ``wss://`` trust the same roots, certificates reload without a
restart, and a trusted proxy's ``X-Forwarded-For`` names the peer.

Every test runs on each transport (``transport`` parametrizes the fixtures) with the same
assertions; the certificates are made here, by a throwaway CA.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import pytest_asyncio
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from google.protobuf import json_format

from asap import Agent, BearerAuth, Client, Incoming, Limits, RetryPolicy, Server, errors
from asap import connect as asap_connect
from asap.cli import _parser
from asap.client import task_envelope
from asap.protocol.admission import peer_key
from asap.tls import ClientTLS, PeerCertificate, ServerTLS
from asap.v1 import payload_pb2, task_pb2
from tests.conftest import Transport


AGENT_ID = "urn:asap:agent:identity-test"
ALICE = "urn:asap:agent:alice"
BOB = "urn:asap:agent:bob"
TOKENS = {"alice-token": ALICE, "bob-token": BOB}
ONE_ATTEMPT = RetryPolicy(max_attempts=1)


def make_agent() -> Agent:
    """One skill, ``whoami``: what the handler sees of the caller."""
    agent = Agent(AGENT_ID)

    @agent.skill("whoami")
    async def whoami(request: Incoming[payload_pb2.TaskRequest]) -> payload_pb2.TaskResponse:
        identity = request.call.identity
        response = payload_pb2.TaskResponse(task_id="t", status=task_pb2.TASK_STATUS_COMPLETED)
        json_format.ParseDict(
            {
                "subject": identity.subject if identity else None,
                "claims": dict(identity.claims) if identity else {},
                "principal": request.call.principal,
                "peer_host": request.call.peer_host,
            },
            response.result,
        )
        return response

    return agent


# -- certificates -----------------------------------------------------------------------------


def issue(
    ca: trustme.CA, *, uris: tuple[str, ...] = (), dns: tuple[str, ...] = (), cn: str = ""
) -> tuple[bytes, bytes]:
    """A client certificate signed by ``ca`` with exactly these names: (PEM chain, PEM key).

    trustme cannot put URI SANs in a certificate, so this builds it with ``cryptography``.
    """
    ca_key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else [])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
    )
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri) for uri in uris]
    names += [x509.DNSName(name) for name in dns]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    certificate = builder.sign(ca_key, hashes.SHA256())
    return (
        certificate.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


def server_tls(
    ca: trustme.CA, *, client_ca: trustme.CA | None = None, **options: object
) -> ServerTLS:
    """A certificate for 127.0.0.1 from ``ca``; with ``client_ca``, client certificates required."""
    cert = ca.issue_cert("localhost", "127.0.0.1")
    return ServerTLS(
        cert_chain=b"".join(pem.bytes() for pem in cert.cert_chain_pems),
        private_key=cert.private_key_pem.bytes(),
        client_ca=None if client_ca is None else client_ca.cert_pem.bytes(),
        **options,  # type: ignore[arg-type]
    )


def client_tls(ca: trustme.CA | None, client: tuple[bytes, bytes] | None = None) -> ClientTLS:
    """Trust ``ca`` only (None: the system store); present ``client`` (chain, key) if given."""
    return ClientTLS(
        root_certificates=None if ca is None else ca.cert_pem.bytes(),
        cert_chain=None if client is None else client[0],
        private_key=None if client is None else client[1],
    )


# -- fixtures ---------------------------------------------------------------------------------


@dataclass
class Served:
    server: Server
    url: str


Serve = Callable[..., Awaitable[Served]]
Dial = Callable[..., Client]


@pytest_asyncio.fixture
async def serve(transport: Transport) -> AsyncIterator[Serve]:
    """Start a server with one TLS listener of the transport under test."""
    servers: list[Server] = []

    async def start(
        tls: ServerTLS | None,
        *,
        auth: BearerAuth | None = None,
        bind_sender: bool | None = None,
        trusted_proxies: Sequence[str] = (),
    ) -> Served:
        server = Server(
            make_agent(),
            limits=Limits(rate_limit_per_second=0),
            auth=auth,
            bind_sender=bind_sender,
            trusted_proxies=trusted_proxies,
        )
        if transport.websocket:
            server.add_websocket("127.0.0.1:0", tls=tls)
        else:
            server.add_grpc("127.0.0.1:0", tls=tls)
        await server.start()
        servers.append(server)
        return Served(server, server.endpoints()[0].url)

    yield start
    for server in servers:
        await server.stop(0)


@pytest_asyncio.fixture
async def dial(transport: Transport) -> AsyncIterator[Dial]:
    """Connect clients with the transport's subprotocol (one attempt); closed at teardown."""
    clients: list[Client] = []

    def open_(url: str, tls: ClientTLS, *, sender: str = ALICE, token: str | None = None) -> Client:
        client = asap_connect(
            url,
            sender=sender,
            token=token,
            tls=tls,
            subprotocol=transport.subprotocol,
            retry=ONE_ATTEMPT,  # a refused handshake fails at once
        )
        clients.append(client)
        return client

    yield open_
    for client in clients:
        await client.close()


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


async def whoami(client: Client) -> dict[str, object]:
    response = await client.send(task_envelope(AGENT_ID, "whoami"))
    return json_format.MessageToDict(response.envelope.task_response.result)


# -- client certificates -> ctx.identity --------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("names", "expected"),
    [
        ({"uris": (ALICE, "spiffe://x/y"), "dns": ("alice.example",), "cn": "cn"}, ALICE),
        ({"dns": ("alice.example", "b.example"), "cn": "cn"}, "alice.example"),
        ({"cn": "alice-cn"}, "alice-cn"),
    ],
    ids=["uri-san", "dns-san", "common-name"],
)
async def test_a_client_certificate_is_the_callers_identity(
    serve: Serve, dial: Dial, ca: trustme.CA, names: dict[str, object], expected: str
) -> None:
    """The first URI SAN, else the first DNS SAN, else the CN becomes ctx.identity and principal."""
    served = await serve(server_tls(ca, client_ca=ca))
    client = dial(served.url, client_tls(ca, issue(ca, **names)))  # type: ignore[arg-type]
    seen = await whoami(client)
    assert (seen["subject"], seen["claims"], seen["principal"]) == (
        expected,
        {"credential": "client-certificate"},
        expected,
    )


@pytest.mark.asyncio
async def test_a_certificate_without_names_is_anonymous(
    serve: Serve, dial: Dial, ca: trustme.CA
) -> None:
    """A verified certificate that names nobody gives no identity: the call is anonymous."""
    served = await serve(server_tls(ca, client_ca=ca))
    seen = await whoami(dial(served.url, client_tls(ca, issue(ca))))
    assert seen["subject"] is None
    assert str(seen["principal"]).startswith("peer:")


@pytest.mark.asyncio
async def test_the_certificate_mapping_is_configurable(
    serve: Serve, dial: Dial, ca: trustme.CA
) -> None:
    """ServerTLS(client_identity=...) decides the subject from the certificate."""

    def by_dns(certificate: PeerCertificate) -> str | None:
        assert certificate.pem.startswith(b"-----BEGIN CERTIFICATE-----")
        return f"urn:asap:agent:{certificate.dns_names[0].split('.')[0]}"

    served = await serve(server_tls(ca, client_ca=ca, client_identity=by_dns))
    client = dial(served.url, client_tls(ca, issue(ca, uris=(BOB,), dns=("alice.example",))))
    assert (await whoami(client))["subject"] == ALICE


@pytest.mark.asyncio
async def test_senders_are_bound_to_the_certificate(
    serve: Serve, dial: Dial, ca: trustme.CA
) -> None:
    """Without auth=, a certificate still binds senders: another sender is SENDER_MISMATCH."""
    served = await serve(server_tls(ca, client_ca=ca))
    certificate = client_tls(ca, issue(ca, uris=(ALICE,)))
    assert (await whoami(dial(served.url, certificate, sender=ALICE)))["subject"] == ALICE
    with pytest.raises(errors.SenderMismatch):
        await whoami(dial(served.url, certificate, sender=BOB))


@pytest.mark.asyncio
async def test_host_certificates_bind_senders_only_when_asked(
    serve: Serve, dial: Dial, ca: trustme.CA
) -> None:
    """A DNS-named certificate binds no sender by default; with bind_sender=True it binds every
    sender (and no agent URN can match a host name)."""
    certificate = client_tls(ca, issue(ca, dns=("alice.example",)))
    default = await serve(server_tls(ca, client_ca=ca))
    assert (await whoami(dial(default.url, certificate, sender=BOB)))["subject"] == "alice.example"
    strict = await serve(server_tls(ca, client_ca=ca), bind_sender=True)
    with pytest.raises(errors.SenderMismatch):
        await whoami(dial(strict.url, certificate, sender=BOB))


@pytest.mark.asyncio
async def test_a_token_must_name_the_certificates_subject(
    serve: Serve, dial: Dial, ca: trustme.CA
) -> None:
    """With auth= and mTLS both credentials are required and must agree (IDENTITY_MISMATCH)."""
    served = await serve(server_tls(ca, client_ca=ca), auth=BearerAuth.static(TOKENS))
    certificate = client_tls(ca, issue(ca, uris=(ALICE,)))
    seen = await whoami(dial(served.url, certificate, token="alice-token"))
    assert seen["subject"] == ALICE
    with pytest.raises(errors.IdentityMismatch) as caught:
        await whoami(dial(served.url, certificate, sender=BOB, token="bob-token"))
    assert caught.value.code == errors.Code.PERMISSION_DENIED
    assert caught.value.reason == "IDENTITY_MISMATCH"
    with pytest.raises(errors.Unauthenticated):
        await whoami(dial(served.url, certificate))


# -- the same trust roots -----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_private_ca_is_trusted_only_when_given(
    serve: Serve, dial: Dial, ca: trustme.CA
) -> None:
    """With ca=... the server is reachable; with the system store (which lacks it) it is refused,
    with the same error."""
    served = await serve(server_tls(ca))
    assert (await whoami(dial(served.url, client_tls(ca))))["subject"] is None
    with pytest.raises(errors.Unavailable, match="CERTIFICATE_VERIFY_FAILED"):
        await whoami(dial(served.url, client_tls(None)))


@pytest.mark.asyncio
async def test_the_system_trust_store_is_the_default(
    serve: Serve, dial: Dial, ca: trustme.CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CA in the system store (SSL_CERT_FILE here, as a corporate CA would be) is trusted by
    default: the OS store, not roots bundled with a library."""
    bundle = tmp_path / "system-roots.pem"
    bundle.write_bytes(ca.cert_pem.bytes())
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    served = await serve(server_tls(ca))
    assert (await whoami(dial(served.url, client_tls(None))))["subject"] is None


# -- reloading the server certificate -------------------------------------------------------------


@pytest.mark.asyncio
async def test_reload_tls_serves_new_connections_with_the_new_certificate(
    serve: Serve, dial: Dial, ca: trustme.CA
) -> None:
    """After reload_tls, a new connection gets the new certificate; an open one goes on."""
    served = await serve(server_tls(ca))
    before = dial(served.url, client_tls(ca))
    await whoami(before)
    renewed = trustme.CA()
    served.server.reload_tls(server_tls(renewed))
    assert (await whoami(dial(served.url, client_tls(renewed))))["subject"] is None
    with pytest.raises(errors.Unavailable, match="CERTIFICATE_VERIFY_FAILED"):
        await whoami(dial(served.url, client_tls(ca)))
    assert (await whoami(before))["subject"] is None  # the connection opened before


@pytest.mark.asyncio
async def test_reload_tls_with_a_new_client_ca(serve: Serve, dial: Dial, ca: trustme.CA) -> None:
    """A reloaded client CA decides which client certificates new connections accept."""
    served = await serve(server_tls(ca, client_ca=ca))
    clients = trustme.CA()
    served.server.reload_tls(server_tls(ca, client_ca=clients))
    renewed = dial(served.url, client_tls(ca, issue(clients, uris=(ALICE,))))
    assert (await whoami(renewed))["subject"] == ALICE
    with pytest.raises(errors.Unavailable):
        await whoami(dial(served.url, client_tls(ca, issue(ca, uris=(ALICE,)))))


@pytest.mark.asyncio
async def test_reload_tls_cannot_turn_client_certificates_on_or_off(
    serve: Serve, ca: trustme.CA
) -> None:
    """Requiring client certificates or not is decided at start: ValueError, nothing changes."""
    served = await serve(server_tls(ca))
    with pytest.raises(ValueError, match="client_ca"):
        served.server.reload_tls(server_tls(ca, client_ca=ca))


@pytest.mark.asyncio
async def test_a_reload_that_does_not_load_changes_nothing(
    serve: Serve, dial: Dial, ca: trustme.CA
) -> None:
    """A certificate with another certificate's key is refused (ValueError) before anything
    changes: new connections still get the old certificate."""
    served = await serve(server_tls(ca))
    mismatched = ServerTLS(server_tls(trustme.CA()).cert_chain, server_tls(ca).private_key)
    with pytest.raises(ValueError, match="does not load"):
        served.server.reload_tls(mismatched)
    assert (await whoami(dial(served.url, client_tls(ca))))["subject"] is None


@pytest.mark.asyncio
async def test_reload_tls_needs_a_tls_listener(serve: Serve, ca: trustme.CA) -> None:
    """A plaintext server has no certificate to reload: InvalidState."""
    served = await serve(None)
    with pytest.raises(errors.InvalidState):
        served.server.reload_tls(server_tls(ca))


# -- trusted proxies ------------------------------------------------------------------------------


class HeaderProxy:
    """A reverse proxy on loopback for the bridge: adds headers to the HTTP handshake it forwards,
    then relays bytes both ways (as nginx does with ``proxy_set_header X-Forwarded-For``)."""

    def __init__(self, port: int, headers: Sequence[tuple[str, str]]) -> None:
        self._backend = port
        self._headers = b"".join(f"{k}: {v}\r\n".encode() for k, v in headers)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self) -> HeaderProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # cancelled at stop
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._backend)
        request_line = await reader.readuntil(b"\r\n")
        up_writer.write(request_line + self._headers)
        try:
            async with asyncio.TaskGroup() as relays:
                relays.create_task(_relay(reader, up_writer))
                relays.create_task(_relay(up_reader, writer))
        finally:
            for each in (writer, up_writer):
                each.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()


async def _relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until EOF, then close the other side (so the opposite relay ends too)."""
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


Forwarded = Callable[[str, Sequence[str]], Awaitable[dict[str, object]]]


@pytest_asyncio.fixture
async def forwarded(transport: Transport) -> AsyncIterator[Forwarded]:
    """Call ``whoami`` through a proxy that sends these X-Forwarded-For values: the bridge's
    handshake header (through :class:`HeaderProxy`), gRPC's ``x-forwarded-for`` metadata."""
    clients: list[Client] = []
    proxies: list[HeaderProxy] = []

    async def ask(url: str, values: Sequence[str]) -> dict[str, object]:
        metadata: tuple[tuple[str, str], ...] = ()
        if transport.websocket:
            parts = urlsplit(url)
            assert parts.port is not None
            proxy = await HeaderProxy(parts.port, [("X-Forwarded-For", v) for v in values]).start()
            proxies.append(proxy)
            url = parts._replace(netloc=f"127.0.0.1:{proxy.port}").geturl()
        else:
            metadata = tuple(("x-forwarded-for", value) for value in values)
        client = asap_connect(url, sender=ALICE, subprotocol=transport.subprotocol)
        clients.append(client)
        response = await client.send(task_envelope(AGENT_ID, "whoami"), metadata=metadata)
        return json_format.MessageToDict(response.envelope.task_response.result)

    yield ask
    for client in clients:
        await client.close()
    for proxy in proxies:
        await proxy.stop()


CLIENT = "203.0.113.7"


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("trusted", "values", "peer"),
    [
        (["127.0.0.0/8"], ["198.51.100.9, 203.0.113.7"], CLIENT),
        (["127.0.0.1", "10.0.0.0/8"], ["198.51.100.9", "203.0.113.7, 10.1.2.3"], CLIENT),
        (["127.0.0.0/8"], ["2001:db8::7"], "2001:db8::7"),
        (["10.0.0.0/8"], ["203.0.113.7"], "127.0.0.1"),
        (["127.0.0.0/8"], [], "127.0.0.1"),
        (["127.0.0.0/8"], ["203.0.113.7, not-an-address"], "127.0.0.1"),
        ([], ["203.0.113.7"], "127.0.0.1"),
    ],
    ids=["trusted", "chain", "ipv6", "untrusted-peer", "no-header", "garbage", "off"],
)
async def test_a_trusted_proxy_names_the_peer(
    serve: Serve, forwarded: Forwarded, trusted: list[str], values: list[str], peer: str
) -> None:
    """From a trusted proxy the peer (and the anonymous principal) is the right-most forwarded
    address that is not a trusted proxy; from any other peer the header is ignored."""
    served = await serve(None, trusted_proxies=trusted)
    seen = await forwarded(served.url, values)
    # The anonymous principal groups IPv6 by /64 (asap.protocol.admission.peer_key).
    assert (seen["peer_host"], seen["principal"]) == (peer, f"peer:{peer_key(peer)}")


def test_cli_takes_trusted_proxies_and_a_client_ca() -> None:
    """``asap serve --trusted-proxy`` (repeatable, checked) and ``--tls-client-ca``."""
    args = _parser().parse_args(
        [
            "serve",
            "--trusted-proxy",
            "10.0.0.0/8",
            "--trusted-proxy",
            "2001:db8::1",
            "--tls-client-ca",
            "ca.pem",
        ]
    )
    assert args.trusted_proxy == ["10.0.0.0/8", "2001:db8::1"]
    assert args.tls_client_ca == "ca.pem"
    with pytest.raises(SystemExit):
        _parser().parse_args(["serve", "--trusted-proxy", "not-a-network"])
