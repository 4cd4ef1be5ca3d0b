"""Claim leases in Redis: a live holder keeps its claim; a killed holder's claim is taken over.

The holder is a separate process (``_holder.py``) killed with SIGKILL, as a crashed replica would be.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from asap.core.dedupe import Owned, Stored
from asap.stores.redis import RedisDedupeStore
from tests.redis_server import RedisServer, unique_prefix
from tests.stores.test_store_contract import FP


LEASE = 0.6
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.asyncio
async def test_a_killed_holders_claim_is_taken_over(redis_server: RedisServer) -> None:
    """While the holder lives its lease is renewed; after SIGKILL a waiting duplicate takes over."""
    prefix = unique_prefix()
    holder = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.stores._holder",
        redis_server.url,
        prefix,
        "order-42",
        str(LEASE),
        cwd=ROOT,
        stdout=subprocess.PIPE,
    )
    store = RedisDedupeStore.from_url(redis_server.url, prefix=prefix, lease=LEASE)
    try:
        assert holder.stdout is not None
        assert await holder.stdout.readline() == b"claimed\n"
        waiter = asyncio.create_task(store.claim("order-42", FP))
        # Three leases long the holder keeps renewing: the duplicate must still be waiting.
        done, _ = await asyncio.wait({waiter}, timeout=3 * LEASE)
        assert not done
        holder.kill()
        await holder.wait()
        claim = await asyncio.wait_for(waiter, timeout=10 * LEASE)
        assert isinstance(claim, Owned)
        assert store.stats.takeovers == 1
        await store.complete("order-42", claim, b"answered once")
        assert await store.claim("order-42", FP) == Stored(b"answered once")
    finally:
        if holder.returncode is None:
            holder.kill()
            await holder.wait()
        await store.aclose()
