"""The receiver benchmarks' baseline: the least a webhook receiver on RQ can do.

    python bench/baseline_app.py --bind 127.0.0.1:8090 --workers 5 --threads 4 --timeout 30

A minimal Flask app that parses the JSON body and does one plain ``Queue.enqueue`` per alert (no
authentication, schema, dedup, rate limit, state or audit), served under gunicorn with exactly the
options of ``remediator serve`` (``remediator.web.server.gunicorn_options``). Needs REDIS_URL.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import uuid
from typing import Any

import redis
from flask import Flask, request
from gunicorn.app.base import BaseApplication
from rq import Queue

QUEUE = "remediator"
LADDER_JOB = "workers.jobs.run_ladder"


def create_app() -> Flask:
    app = Flask(__name__)
    queue = Queue(QUEUE, connection=redis.Redis.from_url(os.environ["REDIS_URL"]))

    @app.get("/healthz")
    def healthz() -> Any:
        return {"status": "ok"}

    @app.post("/webhook/alertmanager")
    def alertmanager() -> Any:
        body = request.get_json()
        ids = []
        for alert in body["alerts"]:
            job = queue.enqueue(LADDER_JOB, alert["labels"].get("host_id"), uuid.uuid4().hex)
            ids.append(job.id)
        return {"accepted": ids}, 202

    return app


class BaselineApplication(BaseApplication):
    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        return create_app()


def main() -> None:
    from remediator.web.server import gunicorn_options

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bind", required=True)
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--timeout", type=int, default=30)
    args = parser.parse_args()
    # The same access logger as the remediator's, which also wants a metrics directory.
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="baseline-metrics-"))
    options = gunicorn_options(
        bind=args.bind, workers=args.workers, threads=args.threads, timeout=args.timeout
    )
    BaselineApplication(options).run()


if __name__ == "__main__":
    main()
