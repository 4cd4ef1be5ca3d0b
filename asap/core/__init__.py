"""Transport-agnostic core: method table, call context, dispatcher, agent API, delivery, middleware.

Nothing in this package imports grpc or websockets; both transports call into it.
"""
