"""Static checks for the defects that slipped through review in ASAP's predecessor.

Each check reads the sources (text, :mod:`ast` or :mod:`tomllib`) and names every offender:

- deprecated loop APIs (``asyncio.get_event_loop()``, ``asyncio.ensure_future()``) in ``asap/``;
- ``assert`` statements in ``asap/`` (stripped under ``python -O``; raise a real exception instead);
- ``Any`` in annotations in ``asap/`` (it switches strict type checking off where it is used);
- sleeping in tests (timing-based waits flake under load; await an event instead), except an
  allow-list of lines where the sleep *is* the behaviour under test;
- runtime dependencies listed twice or without a lower bound in ``pyproject.toml``;
- generated files without their generator's "do not edit" header;
- test modules with the same basename (the test tree has no ``__init__.py`` files, so pytest's
  default import mode cannot import two of them).
"""

from __future__ import annotations

import ast
import re
import tomllib
from collections import Counter
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "asap"
TESTS = ROOT / "tests"
GENERATED = ROOT / "generated"


def _sources(directory: Path) -> list[Path]:
    return sorted(path for path in directory.rglob("*.py") if "__pycache__" not in path.parts)


def _relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


# -- asap/ ------------------------------------------------------------------------------------


def test_package_sources_exist() -> None:
    """The checks below have something to check (a moved tree would make them pass vacuously)."""
    assert len(_sources(PACKAGE)) > 10
    assert len(_sources(TESTS)) > 10


def test_no_deprecated_event_loop_apis_in_the_package() -> None:
    """asap/ never calls asyncio.get_event_loop() or asyncio.ensure_future()."""
    pattern = re.compile(r"\b(get_event_loop|ensure_future)\s*\(")
    offenders = [
        f"{_relative(path)}:{number}: {line.strip()}"
        for path in _sources(PACKAGE)
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == []


def test_no_assert_statements_in_the_package() -> None:
    """asap/ has no assert statements: python -O strips them, so they cannot guard anything."""
    offenders = [
        f"{_relative(path)}:{node.lineno}"
        for path in _sources(PACKAGE)
        for node in ast.walk(_parse(path))
        if isinstance(node, ast.Assert)
    ]
    assert offenders == []


def _annotations(tree: ast.Module) -> list[ast.expr]:
    found: list[ast.expr] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            arguments = node.args
            every = [
                *arguments.posonlyargs,
                *arguments.args,
                *arguments.kwonlyargs,
                *(argument for argument in (arguments.vararg, arguments.kwarg) if argument),
            ]
            found.extend(argument.annotation for argument in every if argument.annotation)
            if node.returns is not None:
                found.append(node.returns)
        elif isinstance(node, ast.AnnAssign):
            found.append(node.annotation)
    return found


def _mentions_any(annotation: ast.expr) -> bool:
    for node in ast.walk(annotation):
        if isinstance(node, ast.Name) and node.id == "Any":
            return True
        if (
            isinstance(node, ast.Attribute)
            and node.attr == "Any"
            and isinstance(node.value, ast.Name)
            and node.value.id in {"typing", "typing_extensions"}
        ):
            return True  # not any_pb2.Any, protobuf's message type
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            # A string annotation ("dict[str, Any]"): parse it and look inside.
            try:
                inner = ast.parse(node.value, mode="eval").body
            except SyntaxError:
                continue
            if _mentions_any(inner):
                return True
    return False


def test_no_any_annotations_in_the_package() -> None:
    """asap/ never annotates with Any (nor imports it from typing)."""
    offenders: list[str] = []
    for path in _sources(PACKAGE):
        tree = _parse(path)
        offenders.extend(
            f"{_relative(path)}:{annotation.lineno}: {ast.unparse(annotation)}"
            for annotation in _annotations(tree)
            if _mentions_any(annotation)
        )
        offenders.extend(
            f"{_relative(path)}:{node.lineno}: imports Any"
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom)
            and node.module in {"typing", "typing_extensions"}
            and any(alias.name == "Any" for alias in node.names)
        )
    assert offenders == []


def test_the_any_checker_sees_through_string_annotations() -> None:
    """The Any check finds Any nested in subscripts, attributes and string annotations."""
    tree = ast.parse(
        "def f(a: dict[str, Any], b: 'list[Any]') -> typing.Any: ...\nx: int = 1\ny: any_pb2.Any\n"
    )
    assert [_mentions_any(annotation) for annotation in _annotations(tree)] == [
        True,
        True,
        True,
        False,
        False,
    ]


# -- tests/ -----------------------------------------------------------------------------------

SLEEP = re.compile(
    r"\b(asyncio|time|trio|anyio)\.sleep\s*\(|^\s*(from\s+(asyncio|time)\s+import\s+.*\bsleep\b)"
)

SLEEP_ALLOWED: dict[str, frozenset[str]] = {
    # Path → the exact (stripped) lines allowed there, each with why the sleep is the behaviour.
    # A one-turn yield so waiters already created start and block on the key under test; the
    # tests assert what happens to *blocked* waiters, which no event can signal from outside.
    "tests/stores/test_store_contract.py": frozenset(
        {"await asyncio.sleep(0)  # one loop turn: the waiters start and block on the key"}
    ),
    "tests/unit/core/test_dispatch.py": frozenset(
        {"await asyncio.sleep(0)  # one loop turn: wait_idle starts and blocks"}
    ),
    # A handler's own work (2 ms), so calls are in flight when a replica starts draining.
    "tests/test_rolling_deploy.py": frozenset(
        {
            "await asyncio.sleep(0.002)  # the handler's own work: keeps calls in flight during "
            "the drain"
        }
    ),
    # The chaos replica's handler doing its work between recording entry and completion.
    "tests/chaos_replica.py": frozenset(
        {"await asyncio.sleep(0.001)  # the handler's work: a side effect takes time"}
    ),
    # A task whose cleanup itself awaits: the sleep is the await being tested.
    "tests/unit/core/test_tasks.py": frozenset(
        {"await asyncio.sleep(0)  # cleanup that itself awaits"}
    ),
    # Steps a close() racing a connection attempt through each stage, one loop turn at a time.
    "tests/transports/ws/test_ws_client.py": frozenset(
        {"await asyncio.sleep(0)  # let the attempt get a little further each round"}
    ),
    # One loop turn between two writes, so the server reads the pieces of a cut frame apart.
    "tests/transports/ws/test_ws_fast_lane.py": frozenset(
        {"await asyncio.sleep(0)  # one loop turn: the server reads this piece on its own"}
    ),
}
"""Where a sleep is allowed in tests/: the behaviour itself, never a wait for a condition."""


def test_tests_never_sleep_to_wait() -> None:
    """tests/ never sleeps (asyncio.sleep, time.sleep) except on allow-listed lines."""
    offenders: list[str] = []
    for path in _sources(TESTS):
        relative = _relative(path)
        if path == Path(__file__).resolve():
            continue
        allowed = SLEEP_ALLOWED.get(relative, frozenset())
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if SLEEP.search(line) and line.strip() not in allowed:
                offenders.append(f"{relative}:{number}: {line.strip()}")
    assert offenders == []


def test_sleep_allow_list_has_no_stale_entries() -> None:
    """Every allow-listed sleep still exists (remove entries once the sleep is gone)."""
    stale = [
        f"{relative}: {line}"
        for relative, lines in SLEEP_ALLOWED.items()
        for line in lines
        if not (ROOT / relative).exists()
        or line not in {text.strip() for text in (ROOT / relative).read_text().splitlines()}
    ]
    assert stale == []


def test_test_module_basenames_are_unique() -> None:
    """No two test modules share a basename (rootless test dirs collide under prepend imports)."""
    names = Counter(
        path.name
        for path in _sources(TESTS)
        if path.name.startswith("test_") or path.name.endswith("_test.py")
    )
    duplicates = sorted(name for name, count in names.items() if count > 1)
    assert duplicates == []


def test_no_init_files_in_tests() -> None:
    """The test tree is rootless (no __init__.py): helpers are imported as tests.<path>."""
    assert [_relative(path) for path in TESTS.rglob("__init__.py")] == []


# -- packaging ----------------------------------------------------------------------------------

_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*)$")


def _requirement(text: str) -> tuple[str, str]:
    """Split a PEP 508 requirement into its normalized name and the rest (specifiers, markers)."""
    match = _REQUIREMENT.match(text)
    assert match is not None, f"not a requirement: {text!r}"
    return re.sub(r"[-_.]+", "-", match.group(1)).lower(), match.group(3)


def _project() -> dict[str, object]:
    with (ROOT / "pyproject.toml").open("rb") as file:
        data = tomllib.load(file)
    project = data["project"]
    assert isinstance(project, dict)
    return project


def _dependency_groups() -> dict[str, list[str]]:
    project = _project()
    groups: dict[str, list[str]] = {}
    dependencies = project.get("dependencies", [])
    assert isinstance(dependencies, list)
    groups["dependencies"] = [str(item) for item in dependencies]
    extras = project.get("optional-dependencies", {})
    assert isinstance(extras, dict)
    for name, items in extras.items():
        assert isinstance(items, list)
        groups[f"optional-dependencies.{name}"] = [str(item) for item in items]
    return groups


def test_runtime_dependencies_are_listed_once_with_a_lower_bound() -> None:
    """Each runtime dependency appears once in [project].dependencies and has a >= lower bound."""
    dependencies = _dependency_groups()["dependencies"]
    assert dependencies, "no runtime dependencies found"
    names = Counter(_requirement(item)[0] for item in dependencies)
    assert sorted(name for name, count in names.items() if count > 1) == []
    unbounded = [item for item in dependencies if ">=" not in _requirement(item)[1]]
    assert unbounded == []


def test_optional_dependencies_are_listed_once_with_a_lower_bound() -> None:
    """Each extra lists a package once, with a lower bound, and never repeats a runtime dependency."""
    groups = _dependency_groups()
    runtime = {_requirement(item)[0] for item in groups.pop("dependencies")}
    problems: list[str] = []
    for group, items in groups.items():
        names = Counter(_requirement(item)[0] for item in items)
        problems.extend(f"{group}: {name} twice" for name, count in names.items() if count > 1)
        problems.extend(
            f"{group}: {name} is a runtime dependency" for name in names if name in runtime
        )
        problems.extend(
            f"{group}: {item} has no lower bound"
            for item in items
            if ">=" not in _requirement(item)[1]
        )
    assert problems == []


def test_requirement_parser() -> None:
    """The requirement parser normalizes names and keeps the specifier."""
    assert _requirement("Foo_Bar.baz[extra] >=1.2; python_version>'3'") == (
        "foo-bar-baz",
        ">=1.2; python_version>'3'",
    )


# -- generated/ -------------------------------------------------------------------------------

_GENERATED_HEADERS = (
    "# Generated by the protocol buffer compiler.  DO NOT EDIT!",
    "# Generated by the gRPC Python protocol compiler plugin. DO NOT EDIT!",
    "@generated by mypy-protobuf.  Do not edit manually!",
)


def test_generated_files_carry_the_do_not_edit_header() -> None:
    """Every file under generated/ starts with its generator's do-not-edit header."""
    files = sorted(
        path
        for path in GENERATED.rglob("*")
        if path.is_file() and path.suffix in {".py", ".pyi"} and "__pycache__" not in path.parts
    )
    assert files, "no generated files found"
    missing = [
        _relative(path)
        for path in files
        if path.name != "__init__.py"
        and not any(
            header in "\n".join(path.read_text(encoding="utf-8").splitlines()[:5])
            for header in _GENERATED_HEADERS
        )
    ]
    assert missing == []


def test_protobuf_modules_come_from_protoc() -> None:
    """Every generated *_pb2.py is protoc output (not a hand-edited module) and names its source."""
    modules = sorted(GENERATED.rglob("*_pb2.py"))
    assert modules
    for module in modules:
        head = module.read_text(encoding="utf-8").splitlines()[:5]
        assert _GENERATED_HEADERS[0] in head, _relative(module)
        assert any(line.startswith("# source: ") for line in head), _relative(module)
