"""One outbound HTTP call with a timeout and bounded retries, shared by the pagers and providers.

Messages built here never contain a URL's path, query or credentials (a Slack webhook URL is itself
a secret) nor a request header: only the host, the HTTP status and the exception's type.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests

from remediator.exceptions import TransportFailure

log = logging.getLogger(__name__)

# Answers worth asking again: rate limited, or the server (or a proxy in front of it) is struggling.
RETRY_STATUS: frozenset[int] = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    """How hard one call tries: attempts in all, the wait between them, and the per-request timeout."""

    attempts: int = 3
    backoff: float = 0.5  # seconds before the second attempt, doubled for each one after
    max_backoff: float = 10.0  # seconds, the longest wait between attempts (also caps Retry-After)
    timeout: float = 10.0  # seconds, for connecting and for each read

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"RetryPolicy.attempts={self.attempts} must be at least 1")
        if self.backoff < 0 or self.max_backoff < 0 or self.timeout <= 0:
            raise ValueError("RetryPolicy backoff and max_backoff must be >= 0 and timeout > 0")

    def delay(self, attempt: int, response: requests.Response | None = None) -> float:
        """Seconds to wait after the given 1-based attempt, honouring a numeric Retry-After."""
        wait = self.backoff * (2 ** (attempt - 1))
        if response is not None:
            with contextlib.suppress(ValueError):
                wait = float(response.headers.get("Retry-After", ""))
        return max(0.0, min(wait, self.max_backoff))


def host_of(url: str) -> str:
    """The host (and port) of a URL, the only part of it that is safe to name in a message."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    return f"{host}:{parts.port}" if parts.port else host


def scrub(text: str, secrets: Iterable[str | None]) -> str:
    """Text with every given secret value replaced by ``***``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def request(
    session: requests.Session,
    method: str,
    url: str,
    *,
    policy: RetryPolicy,
    what: str,
    **kwargs: Any,
) -> requests.Response:
    """Send a request, retrying connection errors and RETRY_STATUS answers with backoff.

    Returns the last response (whatever its status); raises TransportFailure when no attempt got an
    answer. ``what`` names the caller in log lines ("pagerduty", "vast", ...).
    """
    last_error = ""
    for attempt in range(1, policy.attempts + 1):
        response: requests.Response | None = None
        try:
            response = session.request(method, url, timeout=policy.timeout, **kwargs)
        except requests.RequestException as exc:
            last_error = type(exc).__name__
            log.warning(
                "%s: %s %s failed (%s), attempt %d of %d",
                what,
                method,
                host_of(url),
                last_error,
                attempt,
                policy.attempts,
            )
        else:
            if response.status_code not in RETRY_STATUS or attempt == policy.attempts:
                return response
            log.warning(
                "%s: %s %s answered HTTP %d, attempt %d of %d",
                what,
                method,
                host_of(url),
                response.status_code,
                attempt,
                policy.attempts,
            )
        if attempt < policy.attempts:
            wait = policy.delay(attempt, response)
            if response is not None:
                response.close()  # hand its connection back before asking again
            time.sleep(wait)
    raise TransportFailure(
        f"{host_of(url)} could not be reached after {policy.attempts} attempt(s) ({last_error})"
    )
