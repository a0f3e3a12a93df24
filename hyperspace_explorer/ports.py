"""Where the package's own HTTP servers (`hse ui`, `hse tune-dashboard`) listen."""
from __future__ import annotations

import errno
import socket

from .errors import HSEError, bounded_int


def check_listen(host: str, port: int) -> None:
    """Raise an HSEError when `port` is not a TCP port or cannot be bound on `host` now
    (in use, or `host` is no address of this machine). Checked before a server prints
    its address and starts: its own bind failure would come after that line, as a
    traceback (optuna-dashboard) or a log line (uvicorn). The server binds again,
    with the same SO_REUSEADDR; a port taken in between still fails there."""
    bounded_int(port, "port", 1, 65535)
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise HSEError(f"cannot listen on host {host!r}: {exc}") from None
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            hint = ": choose another port" if exc.errno == errno.EADDRINUSE else ""
            raise HSEError(f"cannot listen on {host} port {port}: {exc.strerror}{hint}") \
                from None
