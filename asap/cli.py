"""The ``asap`` command: serve an agent, send it a task, read its manifest.

asap serve --grpc 127.0.0.1:50051 --ws 127.0.0.1:8765
asap send grpc://127.0.0.1:50051 --skill echo --input '{"text": "hi"}'
asap send ws://127.0.0.1:8765/asap/v1/ws --skill stream --stream
asap manifest grpc://127.0.0.1:50051
asap schema --out ./schema
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
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
from asap.core.agent import Agent
from asap.errors import AsapError, InsecureTransportError
from asap.protocol.frames import SUBPROTOCOLS
from asap.server import Server
from asap.tls import ClientTLS, ServerTLS


CLI_SENDER = "urn:asap:agent:cli"
"""The sender URN the CLI uses."""
DEFAULT_AGENT = "asap.example:agent"


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


def _server_tls(cert: str, key: str) -> ServerTLS:
    return ServerTLS(Path(cert).read_bytes(), Path(key).read_bytes())


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
    tls = None
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            message = "--tls-cert and --tls-key go together"
            raise SystemExit(message)
        tls = _server_tls(args.tls_cert, args.tls_key)
    auth = None
    token = _token(args)
    if token:
        from asap.core.middleware import BearerAuth

        auth = BearerAuth.static({token: CLI_SENDER})
    server = Server(_load_agent(args.agent), auth=auth)
    if args.grpc:
        server.add_grpc(args.grpc, tls=tls)
    if args.ws:
        server.add_websocket(
            args.ws,
            tls=tls,
            allowed_origins=args.allow_origin or None,
            subprotocols=args.ws_subprotocol or None,
        )
    await server.start()
    for endpoint in server.endpoints():
        print(f"listening {endpoint.url}", flush=True)  # noqa: T201
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
    return 0


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
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
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
