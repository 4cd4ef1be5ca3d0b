"""A real ``redis-server`` for tests: started on a free loopback port, ready when it says so.

Not a test module: ``tests/conftest.py`` builds the ``redis_server`` fixtures on it, and the
subprocess tests (leases, workers, chaos) use it directly. Readiness is read from the server's own
log line ("Ready to accept connections"), never waited for with a sleep.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import uuid
from types import TracebackType


READY = b"ready to accept connections"  # "Ready to …" (TCP) or "… now ready to … at PATH" (unix)
START_TIMEOUT = 20.0
MISSING = (
    "redis-server is not installed: run scripts/ensure_redis.sh (as root it installs the Debian "
    "package redis-server with apt-get; otherwise install redis-server or valkey-server yourself)"
)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def executable() -> str:
    """The redis-server (or valkey-server) binary; raises RuntimeError with how to install it."""
    found = shutil.which("redis-server") or shutil.which("valkey-server")
    if found is None:
        raise RuntimeError(MISSING)
    return found


class RedisServer:
    """One redis-server process without persistence, on 127.0.0.1.

    Args:
        port: The port (0: a free one).
    """

    def __init__(self, port: int = 0, *, unix_socket: str | None = None) -> None:
        self.port = port or free_port()
        self.unix_socket = unix_socket
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``, or ``unix://PATH?db=0`` for a unix-socket server."""
        if self.unix_socket is not None:
            return f"unix://{self.unix_socket}?db=0"
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """Start the server and return once it accepts connections."""
        process = subprocess.Popen(  # noqa: S603 - a fixed argument list
            [
                executable(),
                "--port",
                "0" if self.unix_socket is not None else str(self.port),
                *(("--unixsocket", self.unix_socket) if self.unix_socket is not None else ()),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--loglevel",
                "notice",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self._process = process
        assert process.stdout is not None
        seen: list[bytes] = []
        for line in process.stdout:  # blocks on the pipe until the server logs a line or exits
            seen.append(line)
            if READY in line.lower():
                return self
        process.wait(START_TIMEOUT)
        message = f"redis-server did not start on port {self.port}: {b''.join(seen)[-2000:]!r}"
        raise RuntimeError(message)

    def stop(self) -> None:
        """Kill the server (SIGKILL: as abrupt as a crash) and wait for it."""
        if self._process is not None:
            self._process.kill()
            self._process.wait(START_TIMEOUT)
            if self._process.stdout is not None:
                self._process.stdout.close()
            self._process = None

    def restart(self) -> None:
        """Kill and start again on the same port (everything stored is lost)."""
        self.stop()
        self.start()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def unique_prefix() -> str:
    """A key prefix no other test uses (tests share one server)."""
    return f"test-{uuid.uuid4().hex[:12]}:"
