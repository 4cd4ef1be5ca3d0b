"""Observability built on the interceptor API: OpenTelemetry tracing and Prometheus metrics.

Each module needs its optional extra, and importing it without the extra raises ImportError
naming the extra to install; nothing else in ASAP imports these modules or their libraries.

- :mod:`asap.observability.tracing`: ``pip install 'asap-protocol[otel]'``
- :mod:`asap.observability.metrics`: ``pip install 'asap-protocol[prometheus]'``

(``asap-protocol[observability]`` installs both.) The access log needs no extra:
``Server(access_log=True)``, see :mod:`asap.core.access_log`.
"""
