"""The schema release: proto/VERSION, the released images, ``make release-schema`` and ``asap schema``.

A schema whose image differs from the last released one must carry a higher proto/VERSION (so a
changed schema cannot ship under an old version); each released version keeps its image; the
release script records a version and refuses to release one twice; ``asap schema`` prints and
writes exactly the files the generated modules were compiled from.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from asap import schema
from scripts import release_schema


ROOT = Path(__file__).resolve().parent.parent
RELEASED = ROOT / "proto" / "released"
BUF = str(Path(sys.executable).with_name("buf"))


def _build_image(root: Path, out: Path) -> bytes:
    subprocess.run(  # noqa: S603 - fixed arguments
        [BUF, "build", "--exclude-source-info", "-o", str(out)], check=True, cwd=root
    )
    return out.read_bytes()


def test_each_release_keeps_its_image() -> None:
    """proto/released/VERSION names a release whose image is the one buf breaking uses."""
    released = release_schema.read_version(RELEASED / "VERSION")
    image = release_schema.image_path(released)
    assert image.read_bytes() == (RELEASED / "asap-v1.binpb").read_bytes()


def test_a_changed_schema_has_a_higher_version(tmp_path: Path) -> None:
    """Sources equal to the last release carry its version; changed sources a higher one."""
    current = _build_image(ROOT, tmp_path / "current.binpb")
    version = release_schema.read_version(ROOT / "proto" / "VERSION")
    released = release_schema.read_version(RELEASED / "VERSION")
    if current == (RELEASED / "asap-v1.binpb").read_bytes():
        assert version == released
    else:
        assert version > released, "the schema changed since its release: bump proto/VERSION"
    assert version[0] == released[0]


def test_installed_schema_is_proto_version() -> None:
    """What the package reports is proto/VERSION (copied beside the generated modules)."""
    assert schema.schema_version() == (ROOT / "proto" / "VERSION").read_text().strip()
    assert {name.rsplit("/", 1)[1] for name in schema.proto_files()} == {
        path.name for path in (ROOT / "proto" / "asap" / "v1").glob("*.proto")
    }


@pytest.mark.slow
def test_release_records_the_version_and_refuses_twice(tmp_path: Path) -> None:
    """`make release-schema` on a copy: a new versioned image, the latest image, the VERSION."""
    shutil.copytree(ROOT / "proto", tmp_path / "proto")
    shutil.copy(ROOT / "buf.yaml", tmp_path)
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "release_schema.py", tmp_path / "scripts")
    (tmp_path / "proto" / "VERSION").write_text("1.99.0\n")
    script = [sys.executable, str(tmp_path / "scripts" / "release_schema.py")]
    first = subprocess.run(script, capture_output=True, text=True, check=False)  # noqa: S603
    assert first.returncode == 0, first.stderr
    released = tmp_path / "proto" / "released"
    assert (released / "VERSION").read_text() == "1.99.0\n"
    image = (released / "asap-v1-1.99.0.binpb").read_bytes()
    assert image == (released / "asap-v1.binpb").read_bytes()
    assert image == _build_image(tmp_path, tmp_path / "check.binpb")
    again = subprocess.run(script, capture_output=True, text=True, check=False)  # noqa: S603
    assert again.returncode == 1
    assert "bump proto/VERSION" in again.stderr


def _asap(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "asap.cli", "schema", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


def test_asap_schema_prints_and_writes_the_files(tmp_path: Path) -> None:
    """`asap schema` prints every file; `--out` writes them (and VERSION) by import path."""
    printed = _asap().stdout
    for name, text in schema.proto_files().items():
        assert f"// file: {name} (asap.v1 schema {schema.schema_version()})\n{text}" in printed
    assert _asap("--version").stdout == schema.schema_version() + "\n"
    _asap("--out", str(tmp_path))
    for name, text in schema.proto_files().items():
        assert (tmp_path / name).read_text() == text
        assert text == (ROOT / "proto" / name).read_text()
    assert (tmp_path / "asap" / "v1" / "VERSION").read_text() == schema.schema_version() + "\n"
