"""Regenerate ``generated/`` from ``proto/`` (or check that it is up to date).

Uses grpcio-tools' bundled protoc and the mypy-protobuf plugins, so the only prerequisite is the
project's dev install. ``--check`` generates into a temporary directory and exits 1 on any difference.

Beside the modules, the ``.proto`` sources and ``proto/VERSION`` (the schema version) are copied
next to them (``generated/asap/v1/*.proto``, ``generated/asap/v1/VERSION``), so the wheel carries
exactly the schema its modules were built from (``asap schema``, docs/versioning.md).
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
GENERATED_DIR = ROOT / "generated"
SCHEMA_PACKAGE = Path("asap/v1")
"""Where the generated package (and its copy of the schema and its VERSION) lives."""


def _plugin(name: str) -> str:
    """Return the path of a protoc plugin installed beside this interpreter."""
    scripts = Path(sysconfig.get_path("scripts"))
    path = scripts / name
    if not path.exists():
        found = shutil.which(name)
        if found is None:
            message = f"{name} not found; install the dev extra"
            raise SystemExit(message)
        return found
    return str(path)


def generate(out_dir: Path, proto_dir: Path = PROTO_DIR) -> None:
    """Compile every .proto under ``proto_dir`` into ``out_dir`` and copy the sources beside them."""
    import grpc_tools

    protos = sorted(
        str(p.relative_to(proto_dir))
        for p in proto_dir.rglob("*.proto")
        if "released" not in p.relative_to(proto_dir).parts
    )
    include = Path(grpc_tools.__file__).parent / "_proto"
    out_dir.mkdir(parents=True, exist_ok=True)
    services = [p for p in protos if _declares_service(proto_dir / p)]
    protoc = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"--proto_path={proto_dir}",
        f"--proto_path={include}",
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
    ]
    # Messages for every file; gRPC stubs only for files that declare a service, so generated/
    # holds no empty *_pb2_grpc modules.
    runs = [
        [*protoc, f"--python_out={out_dir}", f"--mypy_out=quiet:{out_dir}", *protos],
        [*protoc, f"--grpc_python_out={out_dir}", f"--mypy_grpc_out=quiet:{out_dir}", *services],
    ]
    for command in runs:
        subprocess.run(command, check=True, cwd=proto_dir)  # noqa: S603 - fixed argv, no shell
    for proto in protos:
        shutil.copyfile(proto_dir / proto, out_dir / proto)
    shutil.copyfile(proto_dir / "VERSION", out_dir / SCHEMA_PACKAGE / "VERSION")


def _declares_service(proto: Path) -> bool:
    """Tell whether a .proto file declares a service."""
    return any(line.startswith("service ") for line in proto.read_text().splitlines())


def _diff(expected: Path, actual: Path) -> list[str]:
    """List files that differ between two trees (ignoring caches)."""

    def files(root: Path) -> set[str]:
        return {
            str(p.relative_to(root))
            for p in root.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts
        }

    want, have = files(expected), files(actual)
    problems = [f"missing: {name}" for name in sorted(want - have)]
    problems += [f"not generated from proto/: {name}" for name in sorted(have - want)]
    problems += [
        f"differs: {name}"
        for name in sorted(want & have)
        if not filecmp.cmp(expected / name, actual / name, shallow=False)
    ]
    return problems


def main() -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if generated/ is stale")
    args = parser.parse_args()
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            fresh = Path(tmp)
            generate(fresh)
            problems = _diff(fresh, GENERATED_DIR)
        if problems:
            print("generated/ is out of date; run `make generate`:", file=sys.stderr)
            for line in problems:
                print(f"  {line}", file=sys.stderr)
            return 1
        print("generated/ is up to date")
        return 0
    if GENERATED_DIR.exists():
        shutil.rmtree(GENERATED_DIR)
    generate(GENERATED_DIR)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
