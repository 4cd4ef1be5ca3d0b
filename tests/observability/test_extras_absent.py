"""Without the optional extras (opentelemetry, prometheus-client) ASAP imports and serves as before."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest


BLOCKER = textwrap.dedent(
    '''
    import importlib.abc
    import sys

    class Blocker(importlib.abc.MetaPathFinder):
        """Pretend the optional extras are not installed."""

        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("opentelemetry", "prometheus_client"):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
            return None

    sys.meta_path.insert(0, Blocker())
    '''
)

SCRIPT = BLOCKER + textwrap.dedent(
    """
    import asyncio
    import logging

    import asap
    from asap import Server, connect, task_envelope
    from asap.example import agent

    async def main():
        logging.basicConfig(level=logging.INFO, format="%(name)s %(message)s")
        server = Server(agent, access_log=True)
        server.add_grpc("127.0.0.1:0")
        server.add_websocket("127.0.0.1:0")
        await server.start()
        try:
            for endpoint in server.endpoints():
                async with connect(endpoint.url, sender="urn:asap:agent:t") as client:
                    reply = await client.send(task_envelope(agent.id, "echo", {"text": "hi"}))
                    assert reply.envelope.task_response.result["text"] == "hi"
        finally:
            await server.stop(0)
        for name in ("asap.observability.tracing", "asap.observability.metrics"):
            try:
                __import__(name)
            except ImportError as exc:
                print("refused", name, "|", exc)
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("opentelemetry", "prometheus_client"))
        print("loaded extras:", leaked)

    asyncio.run(main())
    """
)


@pytest.mark.slow
def test_serving_works_without_the_extras() -> None:
    """Import, serve on both transports with the access log, call: all without either extra."""
    result = subprocess.run(  # noqa: S603 - our own interpreter and script
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "loaded extras: []" in lines
    refused = [line for line in lines if line.startswith("refused")]
    assert len(refused) == 2
    assert "asap-protocol[otel]" in refused[0]
    assert "asap-protocol[prometheus]" in refused[1]
    access = [line for line in result.stderr.splitlines() if line.startswith("asap.access ")]
    assert len(access) == 2
