"""PagerDuty Events API v2: ``trigger`` opens an incident, ``resolve`` with the same dedup_key closes it."""

from __future__ import annotations

import requests

from remediator.clients.http import RetryPolicy
from remediator.clients.pagers.base import HttpPager, Page
from remediator.config import Settings

CLIENT = "ringrift-remediator"
MAX_SUMMARY = 1024  # characters, the Events v2 limit for payload.summary
ACCEPTED = frozenset({202})  # Events v2 answers 202 Accepted for every event it takes


class PagerDutyPager(HttpPager):
    """Sends Events v2 to the enqueue endpoint; the routing key lives only in the request body."""

    name = "pagerduty"

    def __init__(
        self,
        url: str,
        routing_key: str,
        *,
        client_url: str | None = None,
        retry: RetryPolicy | None = None,
        session: requests.Session | None = None,
    ):
        if not routing_key:
            raise ValueError("PagerDutyPager needs a routing key (REMEDIATOR_PAGERDUTY_ROUTING_KEY)")
        super().__init__(url, retry=retry, session=session)
        self._routing_key = routing_key
        self.client_url = client_url

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: object) -> PagerDutyPager | None:
        """The pager when a routing key is configured, else None."""
        if not settings.pagerduty_routing_key:
            return None
        return cls(settings.pagerduty_url, settings.pagerduty_routing_key, **kwargs)  # type: ignore[arg-type]

    def _secrets(self) -> tuple[str | None, ...]:
        return (self._routing_key, *super()._secrets())

    def event(self, page: Page, action: str) -> dict[str, object]:
        """The Events v2 body for ``trigger`` or ``resolve``."""
        body: dict[str, object] = {
            "routing_key": self._routing_key,
            "event_action": action,
            "dedup_key": page.dedup_key,
        }
        if action == "trigger":
            body["payload"] = {
                "summary": page.summary[:MAX_SUMMARY],
                "source": page.source,
                "severity": page.severity,
                "custom_details": {**page.details, "hosts": list(page.hosts)},
            }
            body["client"] = CLIENT
            if self.client_url:
                body["client_url"] = self.client_url
        return body

    def trigger(self, page: Page) -> None:
        """Open (or update) the incident named by the page's dedup_key."""
        self._post(self.event(page, "trigger"), ok=ACCEPTED)

    def resolve(self, page: Page) -> None:
        """Resolve the incident named by the page's dedup_key."""
        self._post(self.event(page, "resolve"), ok=ACCEPTED)
