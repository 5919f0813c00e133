"""HTTP hardening every answer of the app gets: a Host allow-list, and headers against sniffing and caching.

The Host allow-list (``REMEDIATOR_ALLOWED_HOSTS``) is the guard against DNS rebinding: a web page an
operator visits can point its own name at the receiver's address and read, through the operator's
browser, whatever the receiver answers without a token; the request then carries the page's name as its
Host. A Host that is not in the list is answered 421 Misdirected Request (RFC 9110 15.5.20: "this server
does not answer for that name"), which says more than a bare 400, and never echoes the value.

Some paths answer whatever the Host (``HOST_EXEMPT``): the kubelet's probes and Prometheus's scrapes
address the pod by its IP, which no allow-list can know in advance; those paths say nothing about hosts
(counters, "ok"). The webhook is exempt too: a delivery carries its own token, which a rebinding page
does not have, and refusing a delivery sent to an unlisted name would drop the alert (Alertmanager does
not retry a 4xx).
"""

from __future__ import annotations

import re
from typing import Any

from flask import Flask, Response, request

from remediator.extensions import get_settings

# On every answer: no browser may guess a type other than the one sent (a JSON answer or the metrics
# text rendered as HTML), and no cache may keep what the remediator said about hosts.
HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}
HOST_EXEMPT = frozenset({"/healthz", "/readyz", "/metrics", "/webhook/alertmanager"})
_PORT = re.compile(r":[0-9]{1,5}")


def init_app(app: Flask) -> None:
    """Register the hardening on ``app``."""
    app.before_request(_check_host)
    app.after_request(_harden)


def host_name(header: str) -> str:
    """The name in a Host header, lowercased, without its port or a trailing dot; "" when malformed."""
    value = header.strip().lower()
    if value.startswith("["):  # an IPv6 address, [::1]:8080
        end = value.find("]")
        if end < 0:
            return ""
        name, rest = value[: end + 1], value[end + 1 :]
    else:
        name, colon, port = value.partition(":")
        rest = colon + port
    if rest and not _PORT.fullmatch(rest):
        return ""
    return name.rstrip(".")


def _check_host() -> Any:
    allowed = get_settings().allowed_hosts
    if not allowed or request.path in HOST_EXEMPT:
        return None
    if host_name(request.environ.get("HTTP_HOST", "")) in allowed:
        return None
    return {
        "error": "this receiver does not answer for that Host name: it answers only for the names in "
        "REMEDIATOR_ALLOWED_HOSTS (a guard against DNS rebinding)"
    }, 421


def _harden(response: Response) -> Response:
    for name, value in HEADERS.items():
        response.headers.setdefault(name, value)
    return response
