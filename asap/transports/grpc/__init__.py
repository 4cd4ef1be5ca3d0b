"""The gRPC transport: AgentService over grpc.aio, with the standard health and reflection services.

:mod:`~asap.transports.grpc.server` feeds calls to the core's Dispatcher through one generic
handler, :mod:`~asap.transports.grpc.client` implements the Channel contract over a grpc.aio
channel, and :mod:`~asap.transports.grpc.status` maps errors to gRPC statuses and back. This is the
only package that imports ``grpc``.
"""
