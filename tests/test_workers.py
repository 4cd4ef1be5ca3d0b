"""``asap serve --workers N --store redis://…``: N processes share both ports and the Redis store.

Runs the real CLI in subprocesses: refusal without a shared store, both listeners served by both
workers (SO_REUSEPORT), one envelope answered once whichever worker gets it, a killed worker
restarted, and SIGTERM draining everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from asap import connect
from asap.cli import CLI_SENDER
from asap.v1 import envelope_pb2
from tests.conformance._service import envelope
from tests.redis_server import RedisServer, free_port


ROOT = Path(__file__).resolve().parents[1]
AGENT = "urn:asap:agent:example"


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "asap.cli", *args]


def test_several_workers_without_a_shared_store_are_refused() -> None:
    """--workers 2 without --store exits at once, saying what to pass and why."""
    done = subprocess.run(  # noqa: S603 - our own interpreter and module
        _cli("serve", "--grpc", f"127.0.0.1:{free_port()}", "--workers", "2"),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode != 0
    assert "--store redis://" in done.stderr
    assert "shared store" in done.stderr


@pytest.fixture
def workers(
    redis_server: RedisServer,
) -> Iterator[tuple[subprocess.Popen[str], list[int], str, str]]:
    grpc_port, ws_port = free_port(), free_port()
    process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        _cli(
            "serve",
            "--grpc",
            f"127.0.0.1:{grpc_port}",
            "--ws",
            f"127.0.0.1:{ws_port}",
            "--workers",
            "2",
            "--store",
            redis_server.url,
            "--grace",
            "2",
        ),
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert process.stdout is not None
    pids: list[int] = []
    for line in process.stdout:  # blocks until the supervisor reports every worker listening
        if line.startswith("workers 2 pids "):
            pids = [int(pid) for pid in line.split()[3:]]
            break
    assert len(pids) == 2
    try:
        yield process, pids, f"grpc://127.0.0.1:{grpc_port}", f"ws://127.0.0.1:{ws_port}/asap/v1/ws"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        process.stdout.close()


def _echo() -> envelope_pb2.Envelope:
    built = envelope("echo", {"text": "hi"})
    built.recipient = AGENT
    return built


@pytest.mark.slow
def test_workers_share_ports_and_store_restart_and_drain(
    workers: tuple[subprocess.Popen[str], list[int], str, str],
) -> None:
    """Both ports answer; a duplicate is answered once; a killed worker comes back; SIGTERM drains."""
    process, pids, grpc_url, ws_url = workers

    async def scenario() -> None:
        for url in (grpc_url, ws_url):
            async with connect(url, sender=CLI_SENDER) as client:
                request = client.prepare(_echo())
                first = await client.send(request)
            async with connect(url, sender=CLI_SENDER) as other:  # maybe the other worker
                second = await other.send(request)
            assert second == first

    asyncio.run(scenario())
    os.kill(pids[0], signal.SIGKILL)
    assert process.stdout is not None
    for line in process.stdout:  # the supervisor reports the restarted worker once it listens
        if line.startswith("worker 0 ready pid "):
            pids.append(int(line.split()[-1]))
            break
    asyncio.run(scenario())
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0
    for pid in pids[1:]:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
