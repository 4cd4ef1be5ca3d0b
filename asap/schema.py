"""The asap.v1 schema this installation speaks: its version and its ``.proto`` files.

``scripts/generate.py`` copies ``proto/VERSION`` and every ``.proto`` file next to the generated
modules (``asap/v1/`` in the wheel, ``generated/asap/v1/`` in a checkout), so what is read here is
exactly what the modules were compiled from. Polyglot peers generate their stubs from these files
(``asap schema --out DIR``); GetManifest reports :func:`schema_version` and the payload kinds
(``Capabilities.schema_version``, ``payload_kinds``, ``known_payload_kinds``). See
docs/versioning.md.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Final

from asap.v1 import envelope_pb2


__all__ = [
    "SCHEMA_DIR",
    "SUPPORTED_MAJOR",
    "known_payload_kinds",
    "proto_files",
    "protocol_version",
    "schema_version",
    "write_schema",
]

SCHEMA_DIR: Final = Path(envelope_pb2.__file__).resolve().parent
"""The directory holding the generated modules, the ``.proto`` files and ``VERSION``."""

SUPPORTED_MAJOR: Final = 1
"""The one ASAP major version (``Envelope.asap_version``) this implementation speaks."""

_VERSION = re.compile(r"(\d+)\.(\d+)\.(\d+)")


@cache
def schema_version() -> str:
    """The schema version, ``MAJOR.MINOR.PATCH`` (for example ``"1.1.0"``).

    Raises:
        RuntimeError: The installation has no ``VERSION`` next to its generated modules, or it
            does not hold a version (a broken install or a stale ``generated/``).
    """
    path = SCHEMA_DIR / "VERSION"
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        message = f"no schema VERSION at {path}; run `make generate`"
        raise RuntimeError(message) from exc
    if _VERSION.fullmatch(text) is None:
        message = f"{path} does not hold MAJOR.MINOR.PATCH: {text!r}"
        raise RuntimeError(message)
    return text


def protocol_version() -> str:
    """``MAJOR.MINOR`` of :func:`schema_version`: what senders write into ``asap_version``."""
    major, minor, _ = schema_version().split(".")
    return f"{major}.{minor}"


def known_payload_kinds() -> tuple[str, ...]:
    """Every ``Envelope.payload`` field name this schema knows, in field-number order."""
    oneof = envelope_pb2.Envelope.DESCRIPTOR.oneofs_by_name["payload"]
    return tuple(field.name for field in sorted(oneof.fields, key=lambda field: field.number))


def proto_files() -> Mapping[str, str]:
    """The schema's ``.proto`` files by import path (``"asap/v1/envelope.proto"``) → text."""
    package = "/".join(envelope_pb2.DESCRIPTOR.package.split("."))
    return {
        f"{package}/{path.name}": path.read_text(encoding="utf-8")
        for path in sorted(SCHEMA_DIR.glob("*.proto"))
    }


def write_schema(out: Path) -> list[Path]:
    """Write the ``.proto`` files and ``VERSION`` under ``out`` by import path; return the paths.

    ``protoc --proto_path=OUT`` then compiles them in any language.
    """
    written: list[Path] = []
    files = dict(proto_files())
    package = next(iter(files)).rsplit("/", 1)[0] if files else "asap/v1"
    files[f"{package}/VERSION"] = schema_version() + "\n"
    for name, text in files.items():
        target = out / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        written.append(target)
    return written
