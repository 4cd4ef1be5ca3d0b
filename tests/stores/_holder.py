"""Run as a subprocess by test_leases.py: claim a key in Redis, say so, then hold it until killed.

Usage: python -m tests.stores._holder URL PREFIX KEY LEASE
"""

from __future__ import annotations

import asyncio
import sys

from asap.core.dedupe import Owned
from asap.stores.redis import RedisDedupeStore
from tests.stores.test_store_contract import FP


async def main(url: str, prefix: str, key: str, lease: float) -> None:
    store = RedisDedupeStore.from_url(url, prefix=prefix, lease=lease)
    claim = await store.claim(key, FP)
    print("claimed" if isinstance(claim, Owned) else f"not claimed: {claim}", flush=True)  # noqa: T201 - the test reads it
    await asyncio.Event().wait()  # hold the claim (the store renews its lease) until SIGKILL


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])))
