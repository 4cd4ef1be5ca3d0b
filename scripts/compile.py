"""Compile ASAP's hot modules with mypyc into a separate tree (``make compiled``).

The same typed sources, turned into C extension modules by mypyc (part of mypy): attribute
access, calls and dataclass fields of the compiled modules stop going through the interpreter.
The source tree stays pure Python (an edit to a ``.py`` file is never shadowed by a stale
``.so``): the script copies ``asap/`` and ``generated/`` to ``.build/compiled/`` and builds the
extensions in place there. Run code against it with::

    PYTHONPATH=.build/compiled:.build/compiled/generated python ...

``make test`` runs the conformance suite on that tree as well, and ``scripts/bench.py
--compiled`` measures it beside the raw baselines. Needs a C compiler and the Python headers.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.machinery
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
TREE = ROOT / ".build" / "compiled"
"""Where the compiled copy lives; ``python_path()`` is what puts it first on ``sys.path``."""

MODULES = (
    "asap/protocol/admission.py",
    "asap/protocol/client_session.py",
    "asap/protocol/deadlines.py",
    "asap/protocol/events.py",
    "asap/protocol/flow.py",
    "asap/protocol/frames.py",
    "asap/protocol/jsoncodec.py",
    "asap/protocol/limits.py",
    "asap/protocol/pbmethods.py",
    "asap/protocol/metadata.py",
    "asap/protocol/ratelimit.py",
    "asap/protocol/session.py",
    "asap/protocol/stream.py",
    "asap/protocol/wire.py",
    "asap/core/agent.py",
    "asap/core/certificates.py",
    "asap/core/context.py",
    "asap/core/dedupe.py",
    "asap/core/delivery.py",
    "asap/core/dispatch.py",
    "asap/core/interceptors.py",
    "asap/core/method.py",
    "asap/core/middleware.py",
    "asap/core/service.py",
    "asap/core/tasks.py",
    "asap/transports/ws/client.py",
    "asap/transports/ws/client_connection.py",
    "asap/transports/ws/dataframes.py",
    "asap/transports/ws/pump.py",
    "asap/transports/ws/server_call.py",
    "asap/transports/ws/server_connection.py",
    "asap/validation.py",
)
"""The modules on a call's path through the bridge and the core; the rest stays interpreted.

The gRPC transport stays interpreted: compiled code trusts every annotation, and grpcio's stubs
promise values grpc.aio does not always give (``ServicerContext.time_remaining()`` is ``None``
for a call without a deadline, not a float), so the compiled module would raise TypeError there.

A compiled class can be subclassed by interpreted code only if it says so
(``@mypyc_attr(allow_interpreted_subclasses=True)``: Interceptor, Session, Codec, BridgePump,
InMemoryDedupeStore)."""

_SETUP = """
import sys
from setuptools import setup
from mypyc.build import mypycify

setup(
    name="asap-compiled",
    packages=[],
    py_modules=[],
    ext_modules=mypycify(sys.argv[3:], opt_level="2"),
    script_args=sys.argv[1:3],
)
"""


def is_compiled() -> bool:
    """Whether the ``asap`` imported here is the mypyc build (its hot modules are extensions)."""
    from asap.protocol import session

    return str(session.__file__).endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def python_path() -> str:
    """The ``PYTHONPATH`` that imports the compiled tree before anything else."""
    return os.pathsep.join((str(TREE), str(TREE / "generated")))


def _copy_sources() -> None:
    if TREE.exists():
        shutil.rmtree(TREE)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.so")
    for name in ("asap", "generated"):
        shutil.copytree(ROOT / name, TREE / name, ignore=ignore)


def _ensure_compiler() -> None:
    """A C compiler and the Python headers, installed with apt-get when root (CI), else named."""
    if shutil.which(os.environ.get("CC", "cc")) is None:
        if os.geteuid() == 0 and shutil.which("apt-get"):
            subprocess.run(["apt-get", "install", "-y", "-q", "gcc"], check=True)  # noqa: S607
        else:
            message = "mypyc needs a C compiler: install one (Debian: apt-get install gcc)"
            raise SystemExit(message)
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not headers.exists():
        message = f"mypyc needs the Python headers ({headers}): Debian: apt-get install python3-dev"
        raise SystemExit(message)


def _fingerprint() -> str:
    """A digest of every source file copied and of this script: what a build was made from."""
    digest = hashlib.sha256(Path(__file__).read_bytes())  # the module list and build settings
    for name in ("asap", "generated"):
        for path in sorted((ROOT / name).rglob("*.py*")):
            if "__pycache__" not in path.parts and path.suffix in {".py", ".pyi"}:
                digest.update(str(path.relative_to(ROOT)).encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()


def build() -> None:
    """Copy the sources to :data:`TREE` and compile :data:`MODULES` in place there.

    Skipped when the tree was built from exactly these sources (``.sources-sha256``).
    """
    stamp = TREE / ".sources-sha256"
    fingerprint = _fingerprint()
    if stamp.exists() and stamp.read_text() == fingerprint:
        print(f"{TREE.relative_to(ROOT)} is up to date")
        return
    _ensure_compiler()
    _copy_sources()
    setup = TREE / "setup_compiled.py"
    setup.write_text(_SETUP)
    environment = {**os.environ, "MYPYPATH": "generated"}
    command = [sys.executable, str(setup), "build_ext", "--inplace", *MODULES]
    done = subprocess.run(  # noqa: S603 - the interpreter running this script
        command, cwd=TREE, env=environment, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-20000:] + done.stderr[-20000:])
        message = f"mypyc failed (exit {done.returncode})"
        raise SystemExit(message)
    built = sorted(TREE.glob("asap/**/*.so"))
    if len(built) != len(MODULES):
        message = f"expected {len(MODULES)} compiled modules, found {len(built)}"
        raise SystemExit(message)
    stamp.write_text(fingerprint)
    print(f"compiled {len(built)} modules into {TREE.relative_to(ROOT)}")


def main() -> int:
    """Build the compiled tree, or print its PYTHONPATH (``--python-path``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python-path", action="store_true", help="print the PYTHONPATH and exit")
    options = parser.parse_args()
    if options.python_path:
        print(python_path())
        return 0
    build()
    return 0


if __name__ == "__main__":
    sys.exit(main())
