"""Item 2: cross-site WebSocket hijacking. Without an allow-list no browser page may use the bridge."""

from __future__ import annotations

from pathlib import Path

import pytest
from websockets.exceptions import InvalidStatus

from asap.cli import TOKEN_ENV, _parser, _token
from tests.security.conftest import RawWs, ServeFactory


@pytest.mark.asyncio
async def test_any_origin_is_refused_when_no_allow_list_is_set(
    serve: ServeFactory, raw_ws: RawWs
) -> None:
    """A handshake carrying an Origin gets 403 by default; one without (not a browser) is accepted."""
    served = await serve()
    with pytest.raises(InvalidStatus) as caught:
        await raw_ws(served.ws_url, origin="https://evil.example")
    assert caught.value.response.status_code == 403
    assert (await raw_ws(served.ws_url)).subprotocol


@pytest.mark.asyncio
async def test_listed_origins_are_accepted(serve: ServeFactory, raw_ws: RawWs) -> None:
    """With ``allowed_origins`` the listed Origin is accepted and any other refused."""
    served = await serve(websocket={"allowed_origins": ["https://app.example"]})
    assert (await raw_ws(served.ws_url, origin="https://app.example")).subprotocol
    with pytest.raises(InvalidStatus) as caught:
        await raw_ws(served.ws_url, origin="https://evil.example")
    assert caught.value.response.status_code == 403


def test_cli_takes_allow_origin_and_subprotocols() -> None:
    """``asap serve --allow-origin`` (repeatable) and ``--ws-subprotocol`` reach the listener."""
    args = _parser().parse_args(
        [
            "serve",
            "--ws",
            "127.0.0.1:0",
            "--allow-origin",
            "https://a.example",
            "--allow-origin",
            "https://b.example",
            "--ws-subprotocol",
            "asap.v1.1.proto",
        ]
    )
    assert args.allow_origin == ["https://a.example", "https://b.example"]
    assert args.ws_subprotocol == ["asap.v1.1.proto"]


def test_token_comes_from_a_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--token-file`` and ``$ASAP_TOKEN`` keep the token out of ``ps``; ``--token`` still wins."""
    secret = tmp_path / "token"
    secret.write_text("from-file\n", encoding="utf-8")
    args = _parser().parse_args(["serve", "--token-file", str(secret)])
    assert _token(args) == "from-file"
    monkeypatch.setenv(TOKEN_ENV, "from-env")
    assert _token(_parser().parse_args(["serve"])) == "from-env"
    assert _token(_parser().parse_args(["serve", "--token", "flag"])) == "flag"
