"""The Python servers the TypeScript tests run against (started by test/harness.ts).

Serves, on free loopback ports, the conformance agent of ``tests/conformance/_service.py`` (the same
handlers the Python conformance matrix uses) under several server configurations, and the example
agent of ``asap/example.py`` for the browser example. Prints one JSON line with every URL once all
are listening, then runs until stdin closes (the test runner's end) or SIGTERM.

Usage: python test/server.py [--origin http://127.0.0.1:PORT ...]

Every bridge listener allows the given origins (the static page server's), so browser tests keep
working when handshakes with an Origin and no allow-list are refused.

The tests drive the conformance agent's probe through one extra skill, ``probe``, on the same agent
(``{"op": "release" | "wait" | "runs" | "cancelled", "key": ...}``), so a test in a browser needs
nothing but the bridge.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from asap import BearerAuth, Identity, Incoming, Limits, Server  # noqa: E402
from asap.example import agent as example_agent  # noqa: E402
from asap.v1 import payload_pb2, task_pb2  # noqa: E402
from tests.conformance._service import (  # noqa: E402
    ERROR_CLASSES_BY_NAME,
    GOOD_TOKEN,
    OTHER_SUBJECT,
    OTHER_TOKEN,
    TESTER,
    Probe,
    completed,
    error_cases,
    make_agent,
    text_input,
)


NO_RATE_LIMIT = dict(rate_limit_per_second=0)


def conformance_agent(probe: Probe):  # noqa: ANN201 - an Agent
    """The conformance agent with the extra ``probe`` skill that drives ``probe``."""
    agent = make_agent(probe)

    @agent.skill("probe", description="Test control: release, wait, runs, cancelled.")
    async def probe_skill(request: Incoming[payload_pb2.TaskRequest]) -> payload_pb2.TaskResponse:
        op = text_input(request, "op")
        key = text_input(request, "key")
        if op == "release":
            probe.release(key)
            return completed("t-probe", {"ok": True})
        if op == "wait":
            await probe.wait(key)
            return completed("t-probe", {"ok": True})
        if op == "cancelled":
            await probe.cancelled(key)
            return completed("t-probe", {"cancelled": True})
        if op == "runs":
            return completed("t-probe", {"runs": probe.runs[key]})
        if op == "was-cancelled":
            return completed("t-probe", {"cancelled": probe.was_cancelled(key)})
        if op == "error-cases":
            cases = [
                {"class": name, "reason": reason, "code": int(ERROR_CLASSES_BY_NAME[name].code)}
                for name, reason in error_cases()
            ]
            return completed("t-probe", {"cases": cases})
        return payload_pb2.TaskResponse(task_id="t-probe", status=task_pb2.TASK_STATUS_FAILED)

    return agent


async def per_token(token: str) -> Identity | None:
    """Any token ``t-NAME`` is the identity urn:asap:agent:NAME (a fresh rate-limit bucket each)."""
    if token in (GOOD_TOKEN, OTHER_TOKEN):
        return Identity(TESTER if token == GOOD_TOKEN else OTHER_SUBJECT)
    if token.startswith("t-") and len(token) > 2:
        return Identity(f"urn:asap:agent:{token[2:]}")
    return None


async def main() -> None:
    """Start every server, print their URLs, serve until stdin closes."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--origin", action="append", default=[])
    args = parser.parse_args()
    origins = args.origin or None

    configs: dict[str, dict[str, object]] = {
        "default": {"limits": Limits(**NO_RATE_LIMIT), "grpc": True},
        "auth": {
            "limits": Limits(**NO_RATE_LIMIT),
            "auth": BearerAuth.static({GOOD_TOKEN: TESTER, OTHER_TOKEN: OTHER_SUBJECT}),
            "bind_sender": True,
        },
        "ratelimited": {
            "limits": Limits(rate_limit_per_second=0.1, rate_limit_burst=2),
            "auth": BearerAuth(per_token),
        },
        "small": {"limits": Limits(max_message_bytes=16 * 1024, **NO_RATE_LIMIT)},
        "slots": {"limits": Limits(max_concurrent_streams=2, **NO_RATE_LIMIT)},
        "busy": {"limits": Limits(max_concurrent_calls=2, **NO_RATE_LIMIT)},
        "window": {"limits": Limits(stream_window_bytes=4096, **NO_RATE_LIMIT)},
    }
    servers: list[Server] = []
    urls: dict[str, object] = {}
    probe = Probe()  # one probe for every server: the tests drive it through the default one
    for config in configs.values():
        server = Server(
            conformance_agent(probe),
            limits=config["limits"],  # type: ignore[arg-type]
            auth=config.get("auth"),  # type: ignore[arg-type]
            bind_sender=bool(config.get("bind_sender", False)),
        )
        server.add_websocket("127.0.0.1:0", allowed_origins=origins)
        if config.get("grpc"):
            server.add_grpc("127.0.0.1:0")
        servers.append(server)
    example = Server(example_agent, limits=Limits(**NO_RATE_LIMIT))
    example.add_websocket("127.0.0.1:0", allowed_origins=origins)
    example.add_grpc("127.0.0.1:0")
    servers.append(example)
    for server in servers:
        await server.start()
    for name, server in zip([*configs, "example"], servers, strict=True):
        endpoints = {ep.url.split(":", 1)[0]: ep.url for ep in server.endpoints()}
        urls[name] = endpoints
    print(json.dumps({"servers": urls}), flush=True)  # noqa: T201 - the runner reads this line

    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, done.set)
    loop.add_signal_handler(signal.SIGINT, done.set)
    # End when the test runner goes away (its end of our stdin closes).
    stdin = sys.stdin.fileno()
    loop.add_reader(stdin, lambda: None if os.read(stdin, 1) else done.set())
    await done.wait()
    await asyncio.gather(*(server.stop(0) for server in servers))


if __name__ == "__main__":
    asyncio.run(main())
