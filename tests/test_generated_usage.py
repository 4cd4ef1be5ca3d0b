"""Generated code is used the way docs/architecture.md says: as modules, and gRPC stubs only by gRPC."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted(
    path
    for folder in ("asap", "tests", "examples", "scripts")
    for path in (ROOT / folder).rglob("*.py")
)


def imported_modules(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) for every ``import`` and ``from … import`` in a file."""
    found: list[tuple[str, list[str]]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.module, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            found.extend((alias.name, []) for alias in node.names)
    return found


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_generated_modules_are_imported_as_modules(path: Path) -> None:
    """`from asap.v1 import envelope_pb2`, never `from asap.v1.envelope_pb2 import Envelope`."""
    offending = [module for module, _ in imported_modules(path) if module.startswith("asap.v1.")]
    assert offending == []


@pytest.mark.parametrize(
    "path",
    [
        p
        for p in SOURCES
        if (ROOT / "asap") in p.parents and (ROOT / "asap/transports/grpc") not in p.parents
    ],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_only_the_grpc_transport_imports_generated_grpc_stubs(path: Path) -> None:
    """The gRPC service stubs are the gRPC transport's business alone."""
    names = [
        name
        for module, names in imported_modules(path)
        for name in [module, *names]
        if name.endswith("_pb2_grpc")
    ]
    assert names == []
