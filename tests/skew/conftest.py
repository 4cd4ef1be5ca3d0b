"""Fixtures of the skew matrix: the next schema, built once per session, and two peer processes.

Both schemas define ``asap.v1``, so each side runs in its own process (``_peer.py``): the "old" peer
with the current schema, the "new" one with the next schema (``_next_schema.py``) first on
``PYTHONPATH``. Each peer serves on gRPC and WebSocket and runs client cases on command, so one
pair of processes serves the whole matrix.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.skew import _next_schema


PEER = Path(__file__).with_name("_peer.py")
STARTUP_TIMEOUT = 30.0


@dataclass
class Peer:
    """A running peer process: its listener URLs, and a pipe to run client cases in it."""

    name: str
    process: subprocess.Popen[str]
    urls: dict[str, str] = field(default_factory=dict)
    schema: str = ""

    def run(self, case: str, url: str, subprotocol: str | None) -> dict[str, object]:
        """Run one client case in this peer against ``url``; return what it observed."""
        stdin, stdout = self.process.stdin, self.process.stdout
        assert stdin is not None
        assert stdout is not None
        stdin.write(json.dumps({"case": case, "url": url, "subprotocol": subprotocol}) + "\n")
        stdin.flush()
        line = stdout.readline()  # bounded by pytest-timeout if the peer hangs
        assert line, f"{self.name} peer exited"
        result: dict[str, object] = json.loads(line)
        return result


def _start(name: str, python_path: list[str]) -> Peer:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if python_path:
        env["PYTHONPATH"] = os.pathsep.join([*python_path, env.get("PYTHONPATH", "")])
    process = subprocess.Popen(  # noqa: S603 - our own interpreter and script
        [sys.executable, str(PEER)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=PEER.parent,
    )
    return Peer(name, process)


def _ready(peer: Peer) -> Peer:
    assert peer.process.stdout is not None
    line = peer.process.stdout.readline()
    assert line, f"the {peer.name} peer exited before listening"
    hello = json.loads(line)
    peer.schema = hello.pop("schema")
    peer.urls = hello
    return peer


@pytest.fixture(scope="session")
def next_schema(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The next schema's generated package root, built once per test session."""
    return _next_schema.build(tmp_path_factory.mktemp("next-schema"))


@pytest.fixture(scope="session")
def peers(next_schema: Path) -> Iterator[dict[str, Peer]]:
    """The "old" and "new" peer processes, started together and stopped at the end."""
    started = {"old": _start("old", []), "new": _start("new", [str(next_schema)])}
    try:
        yield {name: _ready(peer) for name, peer in started.items()}
    finally:
        for peer in started.values():
            if peer.process.stdin is not None:
                peer.process.stdin.close()
        for peer in started.values():
            try:
                peer.process.wait(timeout=STARTUP_TIMEOUT)
            except subprocess.TimeoutExpired:
                peer.process.kill()
                peer.process.wait()
            if peer.process.stdout is not None:
                peer.process.stdout.close()
