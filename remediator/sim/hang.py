"""A TCP listener that accepts connections and never says anything: a host whose sshd hangs.

An SSH client connects at once and then waits for the server's banner that never comes.
"""

from __future__ import annotations

import errno
import selectors
import socket
import threading
import time

BIND_TIMEOUT = 10.0  # seconds to wait for the port sshd held to become free


class HangingListener:
    """Listens on (address, port) in a thread; holds every accepted connection open until ``stop()``."""

    def __init__(self, address: str, port: int) -> None:
        self.address, self.port = address, port
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # The port was sshd's a moment ago: a connection child of the stopped sshd may hold its
        # listening socket briefly after the master exits, so the bind is retried for a bounded time.
        deadline = time.monotonic() + BIND_TIMEOUT
        while True:
            try:
                sock.bind((self.address, self.port))
                break
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE or time.monotonic() > deadline:
                    sock.close()
                    raise
                time.sleep(0.05)
        sock.listen(128)
        sock.setblocking(False)
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, name=f"hang-{self.port}", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        assert self._sock is not None
        held: list[socket.socket] = []
        with selectors.DefaultSelector() as sel:
            sel.register(self._sock, selectors.EVENT_READ)
            while not self._stop.is_set():
                for _ in sel.select(timeout=0.1):
                    try:
                        conn, _addr = self._sock.accept()
                    except BlockingIOError:
                        continue
                    held.append(conn)  # read nothing, send nothing
        for conn in held:
            conn.close()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._sock is not None:
            self._sock.close()
