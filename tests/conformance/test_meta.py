"""The conformance tests themselves stay transport-blind.

Every test in ``tests/conformance`` runs once per transport through a harness fixture; it may not
name a transport, look at which one it runs on, or branch on it, so a difference between transports
can only show up as a failure. These checks read the test modules with :mod:`ast`.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest


HERE = Path(__file__).parent
TEST_FILES = sorted(HERE.glob("test_*.py"))
THIS_FILE = Path(__file__)

FORBIDDEN_WORDS = frozenset({"grpc", "grpcs", "ws", "wss", "websocket", "websockets", "json"})
"""Words a test body may not mention (as a name, an attribute or inside a string)."""
TRANSPORT_ATTRIBUTES = frozenset({"transport", "subprotocol", "websocket", "scheme", "param"})
"""Names whose use in a test body would reveal (or let a test branch on) the transport."""
HARNESS_FIXTURES = frozenset(
    {"harness", "auth_harness", "rate_limited_harness", "small_message_harness", "make_harness"}
)
"""The fixtures that parametrize a test over every transport."""
FORBIDDEN_FIXTURES = frozenset({"transport", "request"})
"""Fixtures a conformance test may not take: the transport parameter, or the request that has it."""
FORBIDDEN_CALLS = frozenset({"getfixturevalue", "skip", "xfail", "importorskip"})
"""Calls a test body may not make: per-transport fixtures or outcomes."""

_WORD = re.compile(r"[a-z0-9]+")


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


def _test_functions(path: Path) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.name.startswith("test_")
    ]


def _conformance_tests() -> list[tuple[Path, ast.FunctionDef | ast.AsyncFunctionDef]]:
    return [
        (path, function)
        for path in TEST_FILES
        if path != THIS_FILE
        for function in _test_functions(path)
    ]


def _problems(function: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    """What in a test function's body reveals or branches on the transport."""
    found: list[str] = []
    for statement in function.body:
        for node in ast.walk(statement):
            line = getattr(node, "lineno", function.lineno)
            names: list[str] = []
            if isinstance(node, ast.Name):
                names.append(node.id)
            elif isinstance(node, ast.Attribute):
                names.append(node.attr)
            elif isinstance(node, ast.arg):
                names.append(node.arg)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                bad = _words(node.value) & FORBIDDEN_WORDS
                if bad:
                    found.append(f"line {line}: string mentions {sorted(bad)}")
            for name in names:
                parts = set(name.lower().split("_"))
                if parts & FORBIDDEN_WORDS:
                    found.append(f"line {line}: name {name!r} mentions a transport")
                if name in TRANSPORT_ATTRIBUTES:
                    found.append(f"line {line}: {name!r} reveals the transport")
                if name in FORBIDDEN_CALLS:
                    found.append(f"line {line}: {name!r} varies the test per transport")
            if isinstance(node, ast.Match):
                found.append(f"line {line}: match statement")
    return found


def test_conformance_modules_exist() -> None:
    """The suite has the modules the conformance plan lists (a rename cannot drop one silently)."""
    names = {path.stem for path in TEST_FILES}
    assert names >= {
        "test_unary",
        "test_streaming",
        "test_error_mapping",
        "test_deadlines",
        "test_cancellation",
        "test_call_metadata",
        "test_delivery_acks",
        "test_auth",
        "test_resource_limits",
        "test_health_manifest",
        "test_envelope_validation",
    }


@pytest.mark.parametrize(
    ("path", "function"),
    _conformance_tests(),
    ids=[f"{path.stem}::{function.name}" for path, function in _conformance_tests()],
)
def test_conformance_test_is_transport_blind(
    path: Path, function: ast.FunctionDef | ast.AsyncFunctionDef
) -> None:
    """A conformance test takes a harness fixture, has a docstring, and never sees the transport."""
    arguments = {argument.arg for argument in function.args.args}
    assert arguments & HARNESS_FIXTURES, f"{function.name} takes no harness fixture"
    assert not arguments & FORBIDDEN_FIXTURES, f"{function.name} asks for the transport"
    docstring = ast.get_docstring(function)
    assert docstring, f"{function.name} has no docstring"
    assert "\n" not in docstring.strip(), f"{function.name}: the docstring is not one line"
    assert _problems(function) == []


def test_conformance_tests_are_not_skipped_or_marked_per_transport() -> None:
    """No decorator skips, xfails or filters a conformance test (every case runs on every transport)."""
    offenders = [
        f"{path.name}::{function.name}"
        for path, function in _conformance_tests()
        for decorator in function.decorator_list
        if _words(ast.unparse(decorator)) & {"skip", "skipif", "xfail", "usefixtures"}
    ]
    assert offenders == []


def test_the_checker_catches_transport_branches() -> None:
    """The body checker flags names, strings, attributes and branches that reveal the transport."""
    source = '''
async def test_bad(harness):
    """Doc."""
    if harness.transport == "grpc":
        pass
    client = ws_client
    value = "asap.v1.json"
    match harness:
        case _:
            pass
'''
    (function,) = [
        node for node in ast.walk(ast.parse(source)) if isinstance(node, ast.AsyncFunctionDef)
    ]
    problems = _problems(function)
    assert any("'transport'" in problem for problem in problems)
    assert any("['grpc']" in problem for problem in problems)
    assert any("ws_client" in problem for problem in problems)
    assert any("['json']" in problem for problem in problems)
    assert any("match" in problem for problem in problems)
