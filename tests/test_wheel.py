"""The built wheel works on its own: asap and asap.v1 import from the installed wheel, not the checkout.

The wheel is built without build isolation (hatchling comes from the dev environment, so no
download is needed) and installed with ``--no-deps`` into a fresh, plain venv. The venv reaches the
runtime dependencies (protobuf, grpcio, ...) through a ``.pth`` file that names the dev venv's
site-packages directory. A path listed in a ``.pth`` file is added to ``sys.path`` but its own
``.pth`` files are not processed, so the dev venv's editable-install hook (which points at the
checkout) stays inactive; the test checks that it did.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parent.parent

CHILD_SCRIPT = """
import json, sys
import asap
from asap import errors, schema, validation
from asap.v1 import envelope_pb2, payload_pb2

envelope = validation.wrap(
    payload_pb2.TaskRequest(skill_id="summarize"),
    sender="urn:asap:agent:wheel",
    recipient="urn:asap:agent:test",
)
validation.fill_defaults(envelope, now=1_700_000_000.0)
validation.validate(envelope, now=1_700_000_000.0)
data = envelope.SerializeToString()
print(json.dumps({
    "asap": asap.__file__,
    "asap_path": list(asap.__path__),
    "errors": errors.__file__,
    "envelope_pb2": envelope_pb2.__file__,
    "sys_path": sys.path,
    "round_trip": envelope_pb2.Envelope.FromString(data) == envelope,
    "size": len(data),
    "schema_version": schema.schema_version(),
    "schema_dir": str(schema.SCHEMA_DIR),
    "proto_files": sorted(schema.proto_files()),
}))
"""


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run a command with PYTHONPATH unset; fail the test with its output if it fails."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    result = subprocess.run(  # noqa: S603 - fixed argument lists, no shell
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    if result.returncode != 0:
        pytest.fail(f"{args} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def _dependency_dirs() -> list[str]:
    """The site-packages directories of the interpreter running the tests (the dev venv)."""
    paths = dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")])
    return [str(Path(path).resolve()) for path in paths]


@pytest.mark.slow
def test_wheel_installs_and_imports_without_the_checkout(tmp_path: Path) -> None:
    """The wheel alone provides asap and asap.v1; a message can be built, validated and serialized."""
    dist = tmp_path / "dist"
    _run(
        [
            sys.executable,
            "-m",
            "build",
            "--wheel",
            "--no-isolation",
            "--outdir",
            str(dist),
            str(ROOT),
        ],
        cwd=tmp_path,
    )
    [wheel] = dist.glob("asap_protocol-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert {"asap/__init__.py", "asap/py.typed", "asap/validation.py"} <= names
    assert {"asap/v1/envelope_pb2.py", "asap/v1/envelope_pb2.pyi"} <= names
    # The schema itself, so polyglot peers can generate stubs from exactly what this version speaks.
    protos = {f"asap/v1/{path.name}" for path in (ROOT / "proto" / "asap" / "v1").glob("*.proto")}
    assert protos
    assert protos | {"asap/v1/VERSION"} <= names
    with zipfile.ZipFile(wheel) as archive:
        assert (
            archive.read("asap/v1/VERSION").decode().strip()
            == (ROOT / "proto" / "VERSION").read_text().strip()
        )
        for name in protos:
            assert archive.read(name) == (ROOT / "proto" / name).read_bytes()
    assert not any(name.startswith(("generated/", "tests/", "proto/")) for name in names)

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    python = venv / ("Scripts" if os.name == "nt" else "bin") / "python"
    _run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)], cwd=tmp_path)
    purelib = Path(
        _run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            cwd=tmp_path,
        ).stdout.strip()
    )
    site_packages = purelib.resolve()
    dependency_dirs = _dependency_dirs()
    for directory in dependency_dirs:
        assert not Path(directory).is_relative_to(ROOT / "generated")
        assert Path(directory) not in {ROOT, ROOT / "asap"}
    (site_packages / "_asap_test_dependencies.pth").write_text("\n".join(dependency_dirs) + "\n")

    output = _run([str(python), "-I", "-c", CHILD_SCRIPT], cwd=tmp_path).stdout
    report = json.loads(output)
    venv_dir = venv.resolve()
    for key in ("asap", "errors", "envelope_pb2"):
        assert Path(report[key]).resolve().is_relative_to(venv_dir), (key, report[key])
    assert [Path(path).resolve() for path in report["asap_path"]] == [site_packages / "asap"]
    sys_path = {Path(path).resolve() for path in report["sys_path"] if path}
    assert ROOT not in sys_path
    assert ROOT / "generated" not in sys_path
    assert report["round_trip"] is True
    assert report["schema_version"] == (ROOT / "proto" / "VERSION").read_text().strip()
    assert Path(report["schema_dir"]).resolve() == site_packages / "asap" / "v1"
    assert report["proto_files"] == sorted(protos)
    assert report["size"] > 0
