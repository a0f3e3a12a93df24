"""A loopback TCP proxy whose link can be cut or frozen on demand: a deterministic
network partition between one client (a worker) and the store.

    with Proxy("127.0.0.1", server_port) as proxy:
        start a worker with proxy.uri
        proxy.cut()      # every connection reset, new ones refused
        proxy.freeze()   # connections stay open but nothing gets through
        proxy.restore()  # traffic flows again (new connections accepted)
"""
from __future__ import annotations

import selectors
import socket
import threading


class Proxy:
    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._state = "open"  # open | cut | frozen
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="test-proxy", daemon=True)

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    def __enter__(self) -> "Proxy":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._listener.close()
        self._close_all()

    def cut(self) -> None:
        with self._lock:
            self._state = "cut"
        self._close_all()

    def freeze(self) -> None:
        with self._lock:
            self._state = "frozen"

    def restore(self) -> None:
        with self._lock:
            self._state = "open"

    def _close_all(self) -> None:
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for a, b in pairs:
            for s in (a, b):
                try:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    s.close()  # linger 0: the peer sees a reset, like a dropped link
                except OSError:
                    pass

    def _loop(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                state, pairs = self._state, list(self._pairs)
            readable = [self._listener] + ([s for pair in pairs for s in pair]
                                           if state == "open" else [])
            sel = selectors.DefaultSelector()
            for s in readable:
                try:
                    sel.register(s, selectors.EVENT_READ)
                except (ValueError, OSError):
                    pass
            events = sel.select(timeout=0.05)
            sel.close()
            for key, _ in events:
                sock = key.fileobj
                if sock is self._listener:
                    self._accept(state)
                else:
                    self._forward(sock, pairs)

    def _accept(self, state: str) -> None:
        try:
            client, _ = self._listener.accept()
        except OSError:
            return
        if state == "cut":
            client.close()
            return
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            return
        with self._lock:
            self._pairs.append((client, upstream))

    def _forward(self, sock: socket.socket, pairs) -> None:
        for a, b in pairs:
            if sock is a or sock is b:
                other = b if sock is a else a
                try:
                    data = sock.recv(65536)
                    if data:
                        other.sendall(data)
                        return
                except OSError:
                    pass
                with self._lock:
                    if (a, b) in self._pairs:
                        self._pairs.remove((a, b))
                a.close()
                b.close()
                return
