"""What a page is, and what every pager can do with one."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

import requests

from remediator.clients.http import RetryPolicy, TransportFailure, host_of, request, scrub
from remediator.exceptions import PagerError

# PagerDuty Events v2 severities, which the other pagers reuse so one page reads the same everywhere.
SEVERITIES: frozenset[str] = frozenset({"critical", "error", "warning", "info"})
MAX_DEDUP_KEY = 255  # characters, PagerDuty's limit for dedup_key


@dataclass(frozen=True)
class Page:
    """One incident a human must hear about; ``dedup_key`` names it across trigger and resolve."""

    dedup_key: str
    summary: str
    severity: str
    source: str
    details: dict[str, Any] = field(default_factory=dict)
    hosts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.dedup_key or len(self.dedup_key) > MAX_DEDUP_KEY:
            raise ValueError(f"Page.dedup_key must be 1..{MAX_DEDUP_KEY} characters, got {self.dedup_key!r}")
        if not self.summary:
            raise ValueError("Page.summary must not be empty")
        if self.severity not in SEVERITIES:
            raise ValueError(f"Page.severity={self.severity!r} must be one of {sorted(SEVERITIES)}")
        object.__setattr__(self, "hosts", tuple(self.hosts))
        try:
            json.dumps(self.details, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"Page.details must be JSON-safe: {exc}") from None

    def text(self, *, resolved: bool = False) -> str:
        """The page as a few lines a person reads in a chat message or an alert description."""
        head = f"RESOLVED: {self.summary}" if resolved else f"[{self.severity.upper()}] {self.summary}"
        lines = [head]
        if self.hosts:
            lines.append("Hosts: " + ", ".join(self.hosts))
        if not resolved:
            for key, value in self.details.items():
                shown = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
                lines.append(f"{key}: {shown}")
        lines.append(f"Source: {self.source} (dedup key {self.dedup_key})")
        return "\n".join(lines)


@runtime_checkable
class Pager(Protocol):
    """Something that wakes a human; both calls raise PagerError when the page did not get through."""

    @property
    def name(self) -> str: ...

    def trigger(self, page: Page) -> None: ...

    def resolve(self, page: Page) -> None: ...


class HttpPager:
    """Shared plumbing of the HTTP pagers: one session, a retry policy, errors that name no secret."""

    name: ClassVar[str] = "http"

    def __init__(
        self, url: str, *, retry: RetryPolicy | None = None, session: requests.Session | None = None
    ):
        self.url = url
        self.retry = retry or RetryPolicy()
        self.session = session or requests.Session()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(host={host_of(self.url)!r})"

    def _secrets(self) -> tuple[str | None, ...]:
        """Values that must never appear in a message (the URL itself may carry a token)."""
        return (self.url,)

    def _post(self, body: object, *, ok: frozenset[int] | None = None) -> requests.Response:
        """POST JSON; return the answer when its status is in ``ok`` (any 2xx by default)."""
        try:
            response = request(self.session, "POST", self.url, policy=self.retry, what=self.name, json=body)
        except TransportFailure as exc:
            raise PagerError(f"{self.name}: {exc}") from None
        if (response.status_code in ok) if ok else response.ok:
            return response
        reason = scrub(_error_text(response), self._secrets())
        raise PagerError(
            f"{self.name}: HTTP {response.status_code} from {host_of(self.url)}"
            + (f": {reason}" if reason else "")
        )


def _error_text(response: requests.Response, limit: int = 200) -> str:
    """A short, single-line excerpt of an error answer."""
    try:
        data = response.json()
    except ValueError:
        text = response.text
    else:
        if isinstance(data, dict):
            parts = [str(data.get(k)) for k in ("message", "error", "status") if data.get(k)]
            errors = data.get("errors")
            if isinstance(errors, list):
                parts.extend(str(e) for e in errors)
            text = "; ".join(parts) or json.dumps(data)
        else:
            text = json.dumps(data)
    text = " ".join(text.split())
    return text[:limit]
