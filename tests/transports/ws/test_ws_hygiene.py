"""Static checks for the WebSocket package, against the predecessor's defects (seed review: C1, B1,
B3, B4, V1); tests/test_hygiene.py covers the whole package for get_event_loop, assert and Any."""

from __future__ import annotations

import ast
import typing
from pathlib import Path

from websockets.client import ClientProtocol
from websockets.server import ServerProtocol

from asap.transports.ws import client_connection, pump, server, server_connection


PACKAGE = Path(__file__).resolve().parents[3] / "asap"
WS = PACKAGE / "transports" / "ws"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_only_the_ws_package_imports_websockets() -> None:
    """websockets is imported under asap/transports/ws and nowhere else in asap/."""
    sources = sorted(PACKAGE.rglob("*.py"))
    assert any(path.is_relative_to(WS) for path in sources)
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in sources
        if not path.is_relative_to(WS)
        and any(name.split(".")[0] == "websockets" for name in _imports(path))
    ]
    assert offenders == []


def test_ws_package_uses_only_the_public_sans_io_api() -> None:
    """The package drives websockets' public sans-I/O protocol: no asyncio or legacy layer (whose
    private internals the predecessor drove), no private names, and never prints."""
    for path in sorted(WS.glob("*.py")):
        names = _imports(path)
        assert not any(name.startswith("websockets.legacy") for name in names), path
        assert not any(name.startswith("websockets.asyncio") for name in names), path
        websockets_names = [name for name in names if name.split(".")[0] == "websockets"]
        assert not any(part.startswith("_") for n in websockets_names for part in n.split(".")), (
            path
        )
        tree = ast.parse(path.read_text(encoding="utf-8"))
        calls = [
            node
            for node in ast.walk(tree)
            if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "print"
        ]
        assert calls == [], path


def test_connection_handles_are_typed() -> None:
    """The connection handles are websockets' own connection types, not Any (review V1)."""
    client_hints = typing.get_type_hints(client_connection.ClientBridgeConnection.__init__)
    server_hints = typing.get_type_hints(
        server_connection.ServerBridgeConnection.__init__,
        localns={"WebSocketServerTransport": server.WebSocketServerTransport},
    )
    assert client_hints["ws"] is ClientProtocol
    assert server_hints["ws"] is ServerProtocol
    pump_hint = typing.get_type_hints(pump.BridgePump.__init__)["ws"]
    assert set(typing.get_args(pump_hint)) == {ServerProtocol, ClientProtocol}
