"""Shared state for replicas: stores that several server processes use together.

``asap.stores.redis`` (the ``asap[redis]`` extra) keeps delivery outcomes and rate-limit buckets in
Redis or Valkey; :func:`asap.stores.redis.open_store` builds them from a URL.
"""
