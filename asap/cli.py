"""The ``asap`` command: serve an agent, send it a task, read its manifest.

asap serve --grpc 127.0.0.1:50051 --ws 127.0.0.1:8765
asap serve --grpc 0.0.0.0:50051 --ws 0.0.0.0:8765 --workers 2 --store redis://127.0.0.1:6379/0
asap serve --grpc 127.0.0.1:50051 --metrics 127.0.0.1:9464 --access-log
asap send grpc://127.0.0.1:50051 --skill echo --input '{"text": "hi"}'
asap send ws://127.0.0.1:8765/asap/v1/ws --skill stream --stream
asap manifest grpc://127.0.0.1:50051
asap schema --out ./schema
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import ipaddress
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from google.protobuf import json_format
from google.protobuf.message import Message

from asap import schema_cli
from asap.client import Client, task_envelope
from asap.connect import connect
from asap.core.access_log import ACCESS_LOGGER
from asap.core.agent import Agent
from asap.errors import AsapError, InsecureTransportError
from asap.protocol.frames import SUBPROTOCOLS
from asap.protocol.limits import Limits
from asap.server import MetricsExporter, Server
from asap.tls import ClientTLS, ServerTLS
from asap.v1 import manifest_pb2


CLI_SENDER = "urn:asap:agent:cli"
"""The sender URN the CLI uses."""
DEFAULT_AGENT = "asap.example:agent"
_DEFAULT_LIMITS = Limits()


def _json(message: Message) -> str:
    return json_format.MessageToJson(message, indent=2, sort_keys=True)


def _print_error(error: AsapError) -> None:
    print(f"error: {error.code.name} ({error.reason}): {error.message}", file=sys.stderr)  # noqa: T201


def _load_agent(spec: str) -> Agent:
    module_name, _, attribute = spec.partition(":")
    if not attribute:
        message = f"--agent must be MODULE:ATTR, got {spec!r}"
        raise SystemExit(message)
    agent = getattr(importlib.import_module(module_name), attribute, None)
    if not isinstance(agent, Agent):
        message = f"{spec} is not an asap Agent"
        raise SystemExit(message)
    return agent


def _cidr(text: str) -> str:
    """An argparse type: a network or an address (``10.0.0.0/8``, ``::1``)."""
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        message = f"not a network (CIDR) or an address: {text!r}"
        raise argparse.ArgumentTypeError(message) from None
    return text


def _server_tls(cert: str, key: str, client_ca: str | None = None) -> ServerTLS:
    return ServerTLS(
        Path(cert).read_bytes(),
        Path(key).read_bytes(),
        client_ca=None if client_ca is None else Path(client_ca).read_bytes(),
    )


def _store_options(args: argparse.Namespace) -> None:
    """Refuse --workers above 1 without a shared store, and port 0 with several workers."""
    if args.workers < 1:
        message = "--workers must be at least 1"
        raise SystemExit(message)
    if args.store and not args.store.startswith(("redis://", "rediss://", "unix://")):
        message = f"--store must be a redis://, rediss:// or unix:// URL, got {args.store!r}"
        raise SystemExit(message)
    if args.workers > 1 and not args.store:
        message = (
            f"--workers {args.workers} needs a shared store: pass --store redis://HOST:PORT/DB. "
            "Without one every worker keeps its own dedupe outcomes and rate limits, so a "
            "retransmission reaching another worker would run its handler again."
        )
        raise SystemExit(message)
    if args.workers > 1:
        for address in (args.grpc, args.ws):
            if address and address.rpartition(":")[2] == "0":
                message = f"--workers {args.workers} needs fixed ports (not {address})"
                raise SystemExit(message)


TOKEN_ENV = "ASAP_TOKEN"  # noqa: S105 - the variable's name, not a token
"""The environment variable a token is read from when neither --token nor --token-file is given."""


def _token(args: argparse.Namespace) -> str | None:
    """The bearer token: ``--token``, else ``--token-file`` (first line), else ``$ASAP_TOKEN``.

    ``--token`` shows in ``ps`` and shell history; prefer the file or the environment variable.
    """
    if args.token:
        token: str = args.token
        return token
    if args.token_file:
        lines = Path(args.token_file).read_text(encoding="utf-8").splitlines()
        return lines[0].strip() if lines and lines[0].strip() else None
    return os.environ.get(TOKEN_ENV) or None


async def _serve(args: argparse.Namespace) -> int:
    if not args.grpc and not args.ws:
        args.grpc = "127.0.0.1:50051"
    _store_options(args)
    if args.workers > 1:
        return await _supervise(args)
    tls = None
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            message = "--tls-cert and --tls-key go together"
            raise SystemExit(message)
        tls = _server_tls(args.tls_cert, args.tls_key, args.tls_client_ca)
    elif args.tls_client_ca:
        message = "--tls-client-ca needs --tls-cert and --tls-key"
        raise SystemExit(message)
    auth = None
    token = _token(args)
    if token:
        from asap.core.middleware import BearerAuth

        auth = BearerAuth.static({token: CLI_SENDER})
    store = None
    buckets = None
    if args.store:
        from asap.stores.redis import RedisDedupeStore, RedisRateLimiter
        from asap.stores.redis import connect as redis_connect

        store = RedisDedupeStore.from_url(args.store)
        await store.ping()  # fail at start, with a clear error, when Redis is not there
        buckets = RedisRateLimiter(redis_connect(args.store))  # limits shared by every worker
    limits = Limits(
        rate_limit_per_second=args.rate_limit,
        rate_limit_burst=args.rate_burst,
        max_connections_per_peer=args.max_connections_per_peer,
    )
    metrics = _metrics(args.metrics)
    server = Server(
        _load_agent(args.agent),
        auth=auth,
        dedupe=store,
        limits=limits,
        rate_buckets=buckets,
        metrics=metrics,
        metrics_address=args.metrics or None,
        access_log=args.access_log,
        trusted_proxies=args.trusted_proxy or (),
    )
    if args.grpc:
        server.add_grpc(args.grpc, tls=tls, reuse_port=args.reuse_port)
    if args.ws:
        server.add_websocket(
            args.ws,
            tls=tls,
            reuse_port=args.reuse_port,
            allowed_origins=args.allow_origin or None,
            subprotocols=args.ws_subprotocol or None,
            authenticate_handshake=args.ws_authenticate_handshake,
        )
    if args.advertise:
        server.advertise([_endpoint(url) for url in args.advertise])
    await server.start()
    for endpoint in server.endpoints():
        print(f"listening {endpoint.url}", flush=True)  # noqa: T201
    if server.metrics_port is not None:
        host = args.metrics.rpartition(":")[0] or "127.0.0.1"
        print(f"metrics http://{host}:{server.metrics_port}/metrics", flush=True)  # noqa: T201
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        print("shutting down", file=sys.stderr, flush=True)  # noqa: T201
        await server.stop(args.grace)
        if store is not None:
            await store.aclose()
        if buckets is not None:
            await buckets.aclose()
    return 0


def _endpoint(url: str) -> manifest_pb2.Endpoint:
    transport = (
        manifest_pb2.TRANSPORT_GRPC if url.startswith("grpc") else manifest_pb2.TRANSPORT_WEBSOCKET
    )
    return manifest_pb2.Endpoint(transport=transport, url=url)


def _worker_argv(argv: Sequence[str]) -> list[str]:
    """The parent's arguments for one worker: without --workers, with --reuse-port."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--workers":
            skip = True
            continue
        if arg.startswith("--workers="):
            continue
        kept.append(arg)
    return [*kept, "--reuse-port"]


RESTART_BACKOFF = 0.5
"""Seconds before a worker that died is started again (doubling while it keeps dying at once)."""


async def _supervise(args: argparse.Namespace) -> int:
    """Run ``--workers`` worker processes sharing the ports; restart the ones that die.

    SIGTERM/SIGINT are passed on to every worker, which drains (``--grace``) and exits.
    """
    command = [sys.executable, "-m", "asap.cli", *_worker_argv(args.argv)]
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    workers: dict[int, asyncio.subprocess.Process] = {}
    ready_slots: set[int] = set()
    listeners = (1 if args.grpc else 0) + (1 if args.ws else 0)

    async def run(slot: int) -> None:
        backoff = RESTART_BACKOFF
        while not stopping.is_set():
            process = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE)
            workers[slot] = process
            if stopping.is_set():  # SIGTERM arrived while it was starting
                process.send_signal(signal.SIGTERM)
            if process.stdout is None:
                return
            ready = False
            listening = 0
            while line := await process.stdout.readline():
                text = line.decode().rstrip()
                if not text.startswith("listening "):
                    continue
                listening += 1
                if slot == 0 and len(ready_slots) < args.workers:
                    print(text, flush=True)  # noqa: T201 - the listeners, once
                ready = listening == listeners
                if ready and slot in ready_slots:
                    print(f"worker {slot} ready pid {process.pid}", flush=True)  # noqa: T201
                elif ready:
                    ready_slots.add(slot)
                    if len(ready_slots) == args.workers:
                        pids = " ".join(str(worker.pid) for worker in workers.values())
                        print(f"workers {args.workers} pids {pids}", flush=True)  # noqa: T201
            code = await process.wait()
            if stopping.is_set():
                return
            message = f"worker {slot} (pid {process.pid}) exited with {code}; restarting"
            print(message, file=sys.stderr, flush=True)  # noqa: T201
            backoff = RESTART_BACKOFF if ready else min(30.0, backoff * 2)
            try:
                await asyncio.wait_for(stopping.wait(), backoff)
            except TimeoutError:
                continue

    runners = [loop.create_task(run(slot)) for slot in range(args.workers)]
    try:
        await stopping.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        for process in workers.values():
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        await asyncio.gather(*runners, return_exceptions=True)
    return 0


def _metrics(address: str | None) -> MetricsExporter | None:
    """PrometheusMetrics when ``--metrics`` was given (needs the prometheus extra)."""
    if address is None:
        return None
    try:
        from asap.observability.metrics import PrometheusMetrics
    except ImportError as exc:
        raise SystemExit(str(exc)) from None
    return PrometheusMetrics()


def _client(args: argparse.Namespace) -> Client:
    tls = None
    if args.ca or args.cert or args.key:
        if bool(args.cert) != bool(args.key):
            message = "--cert and --key go together"
            raise SystemExit(message)
        tls = ClientTLS(
            root_certificates=Path(args.ca).read_bytes() if args.ca else None,
            cert_chain=Path(args.cert).read_bytes() if args.cert else None,
            private_key=Path(args.key).read_bytes() if args.key else None,
        )
    return connect(
        args.url,
        sender=CLI_SENDER,
        token=_token(args),
        timeout=args.timeout,
        tls=tls,
        allow_insecure=args.allow_insecure,
    )


async def _send(args: argparse.Namespace) -> int:
    try:
        task_input = json.loads(args.input)
    except json.JSONDecodeError as exc:
        print(f"error: --input is not JSON: {exc}", file=sys.stderr)  # noqa: T201
        return 2
    if not isinstance(task_input, dict):
        print("error: --input must be a JSON object", file=sys.stderr)  # noqa: T201
        return 2
    async with _client(args) as client:
        recipient = args.recipient or (await client.get_manifest()).id
        envelope = task_envelope(recipient, args.skill, task_input)
        if args.stream:
            subscription = await client.subscribe(envelope)
            async with subscription:
                count = 0
                async for item in subscription:
                    count += 1
                    kind = item.WhichOneof("payload")
                    print(f"[{count}] {kind}", file=sys.stderr, flush=True)  # noqa: T201
                    print(_json(item), flush=True)  # noqa: T201
            return 0
        response = await client.send(envelope)
        print(_json(response))  # noqa: T201
    return 0


async def _manifest(args: argparse.Namespace) -> int:
    async with _client(args) as client:
        print(_json(await client.get_manifest()))  # noqa: T201
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asap", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve an agent over gRPC and/or WebSocket")
    serve.add_argument("--grpc", metavar="HOST:PORT", help="gRPC listener (port 0 picks one)")
    serve.add_argument("--ws", metavar="HOST:PORT", help="WebSocket bridge listener")
    serve.add_argument("--tls-cert", metavar="FILE", help="PEM certificate chain (enables TLS)")
    serve.add_argument("--tls-key", metavar="FILE", help="PEM private key")
    serve.add_argument(
        "--tls-client-ca",
        metavar="FILE",
        help="require client certificates from this PEM CA bundle (mTLS); a certificate's first "
        "URI SAN (else DNS SAN, else CN) is the caller's identity",
    )
    serve.add_argument(
        "--trusted-proxy",
        action="append",
        type=_cidr,
        metavar="CIDR",
        help="a reverse proxy's network (repeatable): its connections' X-Forwarded-For names the "
        "client (rate limits, logs); ignored from every other peer",
    )
    serve.add_argument(
        "--agent", metavar="MODULE:ATTR", default=DEFAULT_AGENT, help="the agent to serve"
    )
    serve.add_argument("--token", help="require this bearer token (visible in ps: prefer the next)")
    serve.add_argument(
        "--token-file", metavar="FILE", help=f"read the token from FILE (or ${TOKEN_ENV})"
    )
    serve.add_argument(
        "--allow-origin",
        action="append",
        metavar="ORIGIN",
        help="let browser pages from ORIGIN (scheme://host[:port]) use the bridge; repeatable. "
        "Without it every handshake carrying an Origin header is refused (403)",
    )
    serve.add_argument(
        "--ws-subprotocol",
        action="append",
        choices=SUBPROTOCOLS,
        help="accept only these bridge subprotocols (repeatable; default: all)",
    )
    serve.add_argument("--grace", type=float, default=5.0, help="seconds to drain on shutdown")
    serve.add_argument(
        "--store",
        metavar="URL",
        help="shared dedupe store: redis://HOST:PORT/DB, rediss:// or unix:// (needs asap[redis])",
    )
    serve.add_argument(
        "--workers", type=int, default=1, help="worker processes sharing the ports (needs --store)"
    )
    serve.add_argument(
        "--advertise",
        metavar="URL",
        action="append",
        default=[],
        help="URL to list in the manifest instead of the listeners' own (repeatable)",
    )
    serve.add_argument(
        "--rate-limit",
        type=float,
        default=_DEFAULT_LIMITS.rate_limit_per_second,
        metavar="PER_SECOND",
        help="envelopes per second per caller (0: no limit); shared by workers with --store",
    )
    serve.add_argument(
        "--rate-burst", type=int, default=_DEFAULT_LIMITS.rate_limit_burst, help="rate-limit burst"
    )
    serve.add_argument(
        "--max-connections-per-peer",
        type=int,
        default=_DEFAULT_LIMITS.max_connections_per_peer,
        metavar="N",
        help="bridge connections one IPv4 address or IPv6 /64 may hold (0: no cap; raise it "
        "behind a reverse proxy)",
    )
    serve.add_argument(
        "--ws-authenticate-handshake",
        action="store_true",
        help="refuse bridge handshakes whose Authorization header (or access_token) does not "
        "verify with HTTP 401 (needs a token)",
    )
    serve.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    serve.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        nargs="?",
        const="",
        help="Prometheus metrics at GET /metrics on the bridge listener, and on HOST:PORT if "
        "given (needs asap-protocol[prometheus])",
    )
    serve.add_argument(
        "--access-log",
        action="store_true",
        help="log one line per call to stderr (logger asap.access; never credentials)",
    )
    serve.set_defaults(run=_serve)

    def client_options(command: argparse.ArgumentParser) -> None:
        command.add_argument("url", help="grpc://, grpcs://, ws:// or wss:// URL of the agent")
        command.add_argument("--timeout", type=float, default=30.0, help="deadline in seconds")
        command.add_argument("--token", help="bearer token (visible in ps: prefer the next)")
        command.add_argument(
            "--token-file", metavar="FILE", help=f"read the token from FILE (or ${TOKEN_ENV})"
        )
        command.add_argument("--ca", metavar="FILE", help="PEM CA bundle to trust (TLS)")
        command.add_argument("--cert", metavar="FILE", help="PEM client certificate (mTLS)")
        command.add_argument("--key", metavar="FILE", help="PEM client private key (mTLS)")
        command.add_argument(
            "--allow-insecure", action="store_true", help="allow plaintext to a non-loopback host"
        )

    send = commands.add_parser("send", help="send a task to an agent and print the answer")
    client_options(send)
    send.add_argument("--skill", required=True, help="the skill to run")
    send.add_argument("--input", default="{}", help="the task input as a JSON object")
    send.add_argument("--recipient", help="the agent URN (default: read from its manifest)")
    send.add_argument("--stream", action="store_true", help="print updates as they arrive")
    send.set_defaults(run=_send)

    manifest = commands.add_parser("manifest", help="print an agent's manifest")
    client_options(manifest)
    manifest.set_defaults(run=_manifest)

    schema_cli.configure(commands.add_parser("schema", help="print or write the .proto schema"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``asap`` command; returns the exit status."""
    args = _parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if getattr(args, "access_log", False):
        logging.getLogger(ACCESS_LOGGER).setLevel(logging.INFO)
    try:
        return int(asyncio.run(args.run(args)))
    except AsapError as error:
        _print_error(error)
        return 1
    except (InsecureTransportError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)  # noqa: T201
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
