"""Post a page back into Alertmanager (``POST /api/v2/alerts``) so the operator's routing decides who
is woken.

A posted alert without ``endsAt`` is resolved by Alertmanager after its ``resolve_timeout`` (5 minutes
by default) unless it is posted again, as Prometheus does on every evaluation. A page is posted once,
so ``trigger`` sets ``endsAt`` ``firing_ttl`` ahead (a day by default): the alert stays firing until
``resolve`` posts it again with ``endsAt`` = now, or until the TTL runs out if the remediator is gone.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import requests

from remediator.clients.http import RetryPolicy
from remediator.clients.pagers.base import HttpPager, Page
from remediator.config import Settings

ALERTNAME = "RemediationEscalation"
ALERTS_PATH = "/api/v2/alerts"
FIRING_TTL = timedelta(hours=24)  # how long a triggered page stays firing without a resolve


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class AlertmanagerPager(HttpPager):
    """Posts a ``RemediationEscalation`` alert, labelled with the page's dedup_key, severity and host."""

    name = "alertmanager"

    def __init__(
        self,
        url: str,
        *,
        generator_url: str | None = None,
        firing_ttl: timedelta = FIRING_TTL,
        retry: RetryPolicy | None = None,
        session: requests.Session | None = None,
    ):
        super().__init__(url.rstrip("/") + ALERTS_PATH, retry=retry, session=session)
        self.generator_url = generator_url
        self.firing_ttl = firing_ttl

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: object) -> AlertmanagerPager | None:
        """The pager when REMEDIATOR_ALERTMANAGER_URL is set, else None."""
        if not settings.alertmanager_url:
            return None
        return cls(settings.alertmanager_url, **kwargs)  # type: ignore[arg-type]

    @staticmethod
    def labels(page: Page) -> dict[str, str]:
        """Labels identify the alert: the same page always yields the same labels (and fingerprint)."""
        labels = {"alertname": ALERTNAME, "severity": page.severity, "dedup_key": page.dedup_key}
        if len(page.hosts) == 1:
            labels["host_id"] = page.hosts[0]
        return labels

    def alert(self, page: Page, *, resolved: bool, now: datetime | None = None) -> dict[str, object]:
        """One postable alert; resolved alerts start and end now, which Alertmanager merges into the
        firing one (it keeps the earlier startsAt)."""
        now = now or datetime.now(UTC)
        alert: dict[str, object] = {
            "labels": self.labels(page),
            "annotations": {
                "summary": page.summary,
                "description": page.text(resolved=resolved),
                "hosts": ", ".join(page.hosts),
                "source": page.source,
            },
            "startsAt": _rfc3339(now),
            "endsAt": _rfc3339(now if resolved else now + self.firing_ttl),
        }
        if self.generator_url:
            alert["generatorURL"] = self.generator_url
        return alert

    def trigger(self, page: Page) -> None:
        """Post the page as a firing alert."""
        self._post([self.alert(page, resolved=False)])

    def resolve(self, page: Page) -> None:
        """Post the page's alert again, ended now."""
        self._post([self.alert(page, resolved=True)])
