"""ASAP: the Async Simple Agent Protocol.

Generated message modules live in ``asap.v1`` (``from asap.v1 import envelope_pb2``). In a wheel
they are installed inside this package; in a development checkout they stay in ``generated/asap/v1``
and ``pkgutil.extend_path`` below joins that directory to this package's search path.
"""

from __future__ import annotations

from pkgutil import extend_path


__path__ = extend_path(__path__, __name__)
