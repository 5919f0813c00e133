"""A WSGI app served by werkzeug on 127.0.0.1 in a background thread of this process."""

from __future__ import annotations

import threading
from typing import Any

from werkzeug.serving import BaseWSGIServer, ThreadedWSGIServer, WSGIRequestHandler, make_server

POLL_INTERVAL = 0.05  # seconds between two looks of serve_forever for a shutdown request


class _QuietHandler(WSGIRequestHandler):
    """No access log on stderr: the sim's own logs say what happened."""

    def log_request(self, *args: Any, **kwargs: Any) -> None:
        pass


class BackgroundServer:
    """``start()`` binds a free port (or ``port``) and serves until ``stop()``."""

    def __init__(self, app: Any, name: str, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app, self.name, self.host, self.port = app, name, host, port
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        server = make_server(self.host, self.port, self.app, threaded=True, request_handler=_QuietHandler)
        assert isinstance(server, ThreadedWSGIServer)  # what threaded=True makes
        server.daemon_threads = True
        self._server = server
        self.port = self._server.server_port
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(POLL_INTERVAL,), name=self.name, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
