"""A generic JSON webhook for pages: Slack-compatible ``text`` plus the page's structured fields."""

from __future__ import annotations

import requests

from remediator.clients.http import RetryPolicy
from remediator.clients.pagers.base import HttpPager, Page
from remediator.config import Settings


class WebhookPager(HttpPager):
    """POSTs one JSON object per trigger or resolve; any 2xx answer counts as delivered."""

    name = "webhook"

    def __init__(
        self, url: str, *, retry: RetryPolicy | None = None, session: requests.Session | None = None
    ):
        super().__init__(url, retry=retry, session=session)

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: object) -> WebhookPager | None:
        """The pager when REMEDIATOR_PAGE_WEBHOOK_URL is set, else None."""
        if not settings.page_webhook_url:
            return None
        return cls(settings.page_webhook_url, **kwargs)  # type: ignore[arg-type]

    @staticmethod
    def message(page: Page, action: str) -> dict[str, object]:
        """The body: Slack reads ``text``; other consumers read the fields beside it."""
        resolved = action == "resolve"
        return {
            "text": page.text(resolved=resolved),
            "event_action": action,
            "status": "resolved" if resolved else "firing",
            "dedup_key": page.dedup_key,
            "summary": page.summary,
            "severity": page.severity,
            "source": page.source,
            "hosts": list(page.hosts),
            "details": page.details,
        }

    def trigger(self, page: Page) -> None:
        """Post the page."""
        self._post(self.message(page, "trigger"))

    def resolve(self, page: Page) -> None:
        """Post that the page's incident is resolved."""
        self._post(self.message(page, "resolve"))
