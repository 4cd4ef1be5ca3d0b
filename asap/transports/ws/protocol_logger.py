"""The logger websockets' sans-I/O protocols get for bridge connections: theirs, minus DEBUG.

At DEBUG, websockets logs every handshake header and every frame: the ``Authorization`` header,
an ``access_token`` query and message bodies would reach whatever handler an application enables
DEBUG for. ASAP logs what a bridge connection does itself (:mod:`asap.transports.ws`), with
credentials redacted; websockets' own INFO and ERROR records still pass.
"""

from __future__ import annotations

import logging


class _WithoutDebug(logging.LoggerAdapter[logging.Logger]):
    """A logger that is never enabled for DEBUG (websockets reads this once per connection)."""

    def isEnabledFor(self, level: int) -> bool:  # noqa: N802 - logging's name
        return level > logging.DEBUG and self.logger.isEnabledFor(level)


SERVER_LOGGER = _WithoutDebug(logging.getLogger("websockets.server"))
"""For :class:`websockets.server.ServerProtocol` (websockets' own logger name)."""

CLIENT_LOGGER = _WithoutDebug(logging.getLogger("websockets.client"))
"""For :class:`websockets.client.ClientProtocol` (websockets' own logger name)."""
