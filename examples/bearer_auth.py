"""An agent behind bearer-token authentication, with the envelope sender bound to the token.

Run: ``.venv/bin/python examples/bearer_auth.py``

The same rules hold on gRPC and on the WebSocket bridge: no token is UNAUTHENTICATED, a wrong token
is UNAUTHENTICATED (INVALID_TOKEN), and a valid token whose identity differs from the envelope's
sender is PERMISSION_DENIED (SENDER_MISMATCH).
"""

from __future__ import annotations

import asyncio

from asap import AsapError, BearerAuth, Server, connect, task_envelope
from asap.example import agent


TOKENS = {"s3cret-token": "urn:asap:agent:alice"}


async def attempt(url: str, label: str, *, token: str | None, sender: str) -> None:
    """Make one call and print what happened."""
    async with connect(url, sender=sender, token=token) as client:
        try:
            response = await client.send(task_envelope(agent.id, "echo", {"hello": "world"}))
        except AsapError as error:
            print(f"  {label:<28} -> {type(error).__name__} {error.code.name} ({error.reason})")
        else:
            print(f"  {label:<28} -> ok: {dict(response.envelope.task_response.result)}")


async def main() -> None:
    """Serve the example agent with auth on both transports and try a few credentials."""
    server = Server(agent, auth=BearerAuth.static(TOKENS), bind_sender=True)
    server.add_grpc("127.0.0.1:0")
    server.add_websocket("127.0.0.1:0")
    async with server:
        for endpoint in server.endpoints():
            print(endpoint.url)
            await attempt(endpoint.url, "no token", token=None, sender="urn:asap:agent:alice")
            await attempt(endpoint.url, "wrong token", token="guess", sender="urn:asap:agent:alice")
            await attempt(
                endpoint.url,
                "alice's token, sender bob",
                token="s3cret-token",
                sender="urn:asap:agent:bob",
            )
            await attempt(
                endpoint.url,
                "alice's token, sender alice",
                token="s3cret-token",
                sender="urn:asap:agent:alice",
            )


if __name__ == "__main__":
    asyncio.run(main())
