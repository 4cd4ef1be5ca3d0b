"""Release the schema in proto/ as the version in proto/VERSION (``make release-schema``).

Refuses a version already released or not above the last release (proto/released/VERSION), and a
schema that breaks the last release (``buf breaking``). Then writes the image of this version,
``proto/released/asap-v1-VERSION.binpb``, makes it the image later schemas are checked against
(``proto/released/asap-v1.binpb``) and records the version in ``proto/released/VERSION``.
Commit the three files together; docs/versioning.md says when to release.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
PROTO = ROOT / "proto"
RELEASED = PROTO / "released"
LATEST_IMAGE = RELEASED / "asap-v1.binpb"
_VERSION = re.compile(r"(\d+)\.(\d+)\.(\d+)")


def read_version(path: Path) -> tuple[int, int, int]:
    """Parse a VERSION file (``MAJOR.MINOR.PATCH``)."""
    match = _VERSION.fullmatch(path.read_text(encoding="utf-8").strip())
    if match is None:
        message = f"{path} does not hold MAJOR.MINOR.PATCH"
        raise SystemExit(message)
    major, minor, patch = (int(part) for part in match.groups())
    return major, minor, patch


def image_path(version: tuple[int, int, int]) -> Path:
    """Where the image of one released version is kept."""
    return RELEASED / f"asap-v1-{'.'.join(map(str, version))}.binpb"


def main() -> int:
    """Entry point."""
    buf = shutil.which("buf", path=str(Path(sys.executable).parent)) or shutil.which("buf")
    if buf is None:
        message = "buf not found; run `make setup`"
        raise SystemExit(message)
    version = read_version(PROTO / "VERSION")
    released = read_version(RELEASED / "VERSION")
    text = ".".join(map(str, version))
    if image_path(version).exists() or version <= released:
        print(f"schema {text} is not above the last release; bump proto/VERSION", file=sys.stderr)
        return 1
    if version[0] != released[0]:
        print("a new major is a new package (asap.v2), not a release of asap.v1", file=sys.stderr)
        return 1
    subprocess.run([buf, "breaking", "--against", str(LATEST_IMAGE)], check=True, cwd=ROOT)  # noqa: S603
    target = image_path(version)
    subprocess.run(  # noqa: S603 - fixed arguments
        [buf, "build", "--exclude-source-info", "-o", str(target)], check=True, cwd=ROOT
    )
    shutil.copyfile(target, LATEST_IMAGE)
    (RELEASED / "VERSION").write_text(text + "\n", encoding="utf-8")
    print(f"released asap.v1 schema {text}: {target.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
