"""HTTP hardening every answer of the app gets: headers against sniffing and caching."""

from __future__ import annotations

from flask import Flask, Response

# On every answer: no browser may guess a type other than the one sent (a JSON answer or the metrics
# text rendered as HTML), and no cache may keep what the remediator said about hosts.
HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


def init_app(app: Flask) -> None:
    """Register the hardening on ``app``."""
    app.after_request(_harden)


def _harden(response: Response) -> Response:
    for name, value in HEADERS.items():
        response.headers.setdefault(name, value)
    return response
