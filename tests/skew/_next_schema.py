"""Build the "next" asap.v1 schema: a copy of proto/ with one of each additive change, compiled.

The changes are the ones a minor release may make (docs/versioning.md): a new field
(``TextPart.language``), new enum values (``TASK_STATUS_ARCHIVED = 7``, ``MESSAGE_ROLE_TOOL = 4``),
a new payload kind (``Envelope.task_archive = 33``, message ``TaskArchive``) and a new detail type
(``asap.v1.QuotaDetail``). Each edit is anchored on text of the current schema and fails loudly
if the anchor is gone, so a schema refactor cannot silently turn the skew suite into a no-op.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "proto"
NEXT_VERSION = "1.2.0"
"""The next schema's version (the current one is in proto/VERSION)."""

# (file, anchor, text inserted after the anchor)
EDITS = (
    (
        "asap/v1/task.proto",
        "  TASK_STATUS_CANCELLED = 6;\n",
        "  // Archived (next schema).\n  TASK_STATUS_ARCHIVED = 7;\n",
    ),
    (
        "asap/v1/task.proto",
        "  MESSAGE_ROLE_SYSTEM = 3;\n",
        "  // A tool (next schema).\n  MESSAGE_ROLE_TOOL = 4;\n",
    ),
    (
        "asap/v1/part.proto",
        '  // The media type of the text, for example "text/markdown"; empty means "text/plain".\n'
        "  string mime_type = 2;\n",
        "  // The text's language (next schema).\n  string language = 3;\n",
    ),
    (
        "asap/v1/payload.proto",
        'import "google/protobuf/struct.proto";\n',
        "\n// TaskArchive archives a task (next schema).\n"
        "message TaskArchive {\n  // The task.\n  string task_id = 1;\n}\n",
    ),
    (
        "asap/v1/envelope.proto",
        "    MessageAck message_ack = 32;\n",
        "    // Archive a task (next schema).\n    TaskArchive task_archive = 33;\n",
    ),
    (
        "asap/v1/error.proto",
        'import "google/protobuf/descriptor.proto";\n',
        "\n// QuotaDetail is an error detail (next schema).\n"
        "message QuotaDetail {\n  // What ran out.\n  string resource = 1;\n"
        "  // The limit.\n  int64 limit = 2;\n}\n",
    ),
)


def build(out: Path) -> Path:
    """Write the next schema's sources under ``out/proto`` and its modules under ``out/gen``.

    Returns:
        The directory to put first on ``sys.path`` (it holds ``asap/v1/*_pb2.py`` and ``VERSION``).
    """
    import grpc_tools

    proto = out / "proto"
    gen = out / "gen"
    shutil.copytree(PROTO_DIR, proto, ignore=shutil.ignore_patterns("released"))
    for name, anchor, addition in EDITS:
        path = proto / name
        text = path.read_text(encoding="utf-8")
        if text.count(anchor) != 1:
            msg = f"next schema: anchor not found once in {name}: {anchor!r}"
            raise RuntimeError(msg)
        path.write_text(text.replace(anchor, anchor + addition), encoding="utf-8")
    package = gen / "asap" / "v1"
    package.mkdir(parents=True)
    files = sorted(str(path.relative_to(proto)) for path in proto.rglob("*.proto"))
    include = Path(grpc_tools.__file__).parent / "_proto"
    subprocess.run(  # noqa: S603 - our own interpreter, fixed arguments
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"--proto_path={proto}",
            f"--proto_path={include}",
            f"--python_out={gen}",
            f"--grpc_python_out={gen}",
            *files,
        ],
        check=True,
        capture_output=True,
    )
    for name in files:
        shutil.copyfile(proto / name, gen / name)
    (package / "VERSION").write_text(NEXT_VERSION + "\n", encoding="utf-8")
    return gen
