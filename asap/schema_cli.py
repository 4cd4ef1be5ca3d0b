"""``asap schema``: print or write the asap.v1 schema this installation speaks.

asap schema                   every .proto file, each after a ``// file: asap/v1/….proto`` line
asap schema --list            the schema version and the files
asap schema --version         the schema version only
asap schema --out DIR         write DIR/asap/v1/*.proto and VERSION (then: protoc -I DIR …)

Kept apart from ``asap.cli`` (which only registers it) so the command is self-contained.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from asap import schema


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the command's options to its subparser and make it run :func:`run`."""
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--out", metavar="DIR", help="write the .proto files and VERSION under DIR")
    what.add_argument("--list", action="store_true", help="print the version and file names")
    what.add_argument("--version", action="store_true", help="print the schema version")
    parser.set_defaults(run=run)


async def run(args: argparse.Namespace) -> int:
    """Run ``asap schema`` (async only because ``asap.cli`` runs every command in a loop)."""
    out = sys.stdout
    if args.version:
        out.write(schema.schema_version() + "\n")
    elif args.out:
        for path in schema.write_schema(Path(args.out)):
            out.write(f"wrote {path}\n")
    elif args.list:
        out.write(f"asap.v1 schema {schema.schema_version()}\n")
        for name in schema.proto_files():
            out.write(f"{name}\n")
    else:
        for name, text in schema.proto_files().items():
            out.write(f"// file: {name} (asap.v1 schema {schema.schema_version()})\n{text}\n")
    return 0
