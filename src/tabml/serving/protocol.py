"""uvicorn HTTP protocols that switch Nagle's algorithm off on every connection.

With `--workers N`, uvicorn binds the listening socket itself (protocol number 0), and asyncio
only sets TCP_NODELAY on sockets whose protocol is IPPROTO_TCP. Responses are written in two
parts (headers, body), so on a keep-alive connection the body waits for the client's delayed
ACK: about 40 ms added to every request. Setting the option per connection fixes it for any
worker count and event loop.
"""

from __future__ import annotations

import contextlib
import socket
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol


def set_nodelay(transport: Any) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):  # already closed by the peer
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class NoDelayH11Protocol(H11Protocol):
    def connection_made(self, transport: Any) -> None:
        set_nodelay(transport)
        super().connection_made(transport)


try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools not installed: h11 only
    HAS_HTTPTOOLS = False
else:
    HAS_HTTPTOOLS = True

    class NoDelayHttpToolsProtocol(HttpToolsProtocol):
        def connection_made(self, transport: Any) -> None:
            set_nodelay(transport)
            super().connection_made(transport)


def best_protocol() -> str:
    """Import path of the fastest available protocol (httptools if installed, else h11)."""
    if HAS_HTTPTOOLS:
        return "tabml.serving.protocol:NoDelayHttpToolsProtocol"
    return "tabml.serving.protocol:NoDelayH11Protocol"
