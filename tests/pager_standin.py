"""A PagerDuty Events API v2 stand-in on loopback: it records every event it answered, and can hold a
request unanswered until the test lets it go (a pager slow enough to kill a worker during delivery)."""

from __future__ import annotations

import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PATH = "/v2/enqueue"


class PagerDutyStandIn:
    def __init__(self, routing_key: str = "R0UT1NGKEY0000000000000000000000") -> None:
        self.routing_key = routing_key
        self.accepted: list[dict[str, Any]] = []  # events answered 202, in order
        self.received = 0  # requests seen, answered or not
        self.hold_next = threading.Event()  # set: the next request is held until release is set
        self.holding = threading.Event()  # set while a request is being held
        self.release = threading.Event()
        self._lock = threading.Lock()
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep the test output quiet
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                with standin._lock:
                    standin.received += 1
                    hold = standin.hold_next.is_set()
                    standin.hold_next.clear()
                if self.path != PATH or body.get("routing_key") != standin.routing_key:
                    self._answer(400, {"status": "invalid event", "message": "bad routing key or path"})
                    return
                if hold:
                    standin.holding.set()
                    standin.release.wait(120)
                    standin.holding.clear()
                    # The worker that sent it is gone by now: whatever it was, it was not delivered.
                    self._answer(503, {"status": "unavailable"})
                    return
                with standin._lock:
                    standin.accepted.append(body)
                self._answer(
                    202,
                    {"status": "success", "message": "Event processed", "dedup_key": body.get("dedup_key")},
                )

            def _answer(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # the client went away

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{PATH}"

    def env(self) -> dict[str, str]:
        return {"REMEDIATOR_PAGERDUTY_URL": self.url, "REMEDIATOR_PAGERDUTY_ROUTING_KEY": self.routing_key}

    def events(self, action: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self.accepted if action is None or e["event_action"] == action]

    def triggers_by_key(self) -> Counter[str]:
        return Counter(e["dedup_key"] for e in self.events("trigger"))

    def __enter__(self) -> PagerDutyStandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
