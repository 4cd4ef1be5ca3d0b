"""The sans-I/O core of ASAP: bridge framing, per-call and per-connection state, limits, rate limits.

Nothing in this package performs I/O or reads a clock: callers feed it received data and the current
time (``now``, in seconds from any monotonic clock) and write out the data it returns. It imports no
``asyncio``, ``socket``, ``grpc`` or ``websockets``, so both transports and the tests drive it the
same way (the split python-websockets makes between ``protocol.py`` and its I/O packages).

Modules:

- :mod:`asap.protocol.limits`: :class:`~asap.protocol.limits.Limits`, the secure defaults.
- :mod:`asap.protocol.ratelimit`: token buckets per principal.
- :mod:`asap.protocol.frames`: WebSocket bridge frames ↔ WebSocket messages, per subprotocol.
- :mod:`asap.protocol.metadata`: call metadata under gRPC's rules.
- :mod:`asap.protocol.stream`: the per-call state machine (a transition table).
- :mod:`asap.protocol.events`: the events a session reports.
- :mod:`asap.protocol.session`: the per-connection state machine, shared part and server side.
- :mod:`asap.protocol.client_session`: the per-connection state machine, client side.
- :mod:`asap.protocol.acks`: bookkeeping of envelopes awaiting acknowledgement.
"""
