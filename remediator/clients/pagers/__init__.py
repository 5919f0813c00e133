"""Pagers: who is woken when the rules decide a human must act.

Every pager whose settings are present receives the pages it is targeted with; with none configured
a page is logged at ERROR and reported as undeliverable, never silently dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping

from remediator.clients.http import RetryPolicy
from remediator.clients.pagers.alertmanager import AlertmanagerPager
from remediator.clients.pagers.base import Page, Pager
from remediator.clients.pagers.pagerduty import PagerDutyPager
from remediator.clients.pagers.webhook import WebhookPager
from remediator.config import Settings
from remediator.exceptions import PagerError

__all__ = [
    "ACTIONS",
    "EVERY_PAGER_FAILED",
    "PAGERS",
    "UNDELIVERABLE",
    "AlertmanagerPager",
    "Page",
    "Pager",
    "PagerDutyPager",
    "RetryPolicy",
    "WebhookPager",
    "deliver",
    "delivered",
    "pagers_from_settings",
]

log = logging.getLogger(__name__)

PAGERS: dict[str, type[PagerDutyPager] | type[WebhookPager] | type[AlertmanagerPager]] = {
    "pagerduty": PagerDutyPager,
    "webhook": WebhookPager,
    "alertmanager": AlertmanagerPager,
}
ACTIONS = frozenset({"trigger", "resolve"})
SENT = "sent"
NOT_CONFIGURED = "not configured"
TAKEN_OVER = "not sent: another worker took the delivery over"
# The key deliver() adds to its outcomes when no pager took the page.
UNDELIVERABLE = "undeliverable"
EVERY_PAGER_FAILED = "every configured pager failed"


def pagers_from_settings(settings: Settings, *, retry: RetryPolicy | None = None) -> dict[str, Pager]:
    """The pagers whose settings are present, keyed by their PAGERS name."""
    pagers: dict[str, Pager] = {}
    for name, cls in PAGERS.items():
        pager = cls.from_settings(settings, retry=retry)
        if pager is not None:
            pagers[name] = pager
    return pagers


def deliver(
    page: Page,
    pagers: Mapping[str, Pager],
    targets: Iterable[str] | None = None,
    action: str = "trigger",
    proceed: Callable[[], bool] | None = None,
) -> dict[str, str]:
    """Send the page to each targeted pager; return each target's outcome.

    Outcomes are ``"sent"``, ``"failed: <reason>"`` or ``"not configured"``; ``targets=None`` means
    every configured pager. When no pager took the page the result also holds
    ``"undeliverable": <why>`` and the page is logged at ERROR, so it is on record either way.

    ``proceed`` is asked before each pager: once it says no (the caller no longer holds the page's
    delivery), no further pager is called and the rest are ``TAKEN_OVER``.
    """
    if action not in ACTIONS:
        raise ValueError(f"deliver(action={action!r}): use one of {sorted(ACTIONS)}")
    names = list(dict.fromkeys(pagers if targets is None else targets))
    outcomes: dict[str, str] = {}
    for name in names:
        if proceed is not None and not proceed():
            outcomes.update({rest: TAKEN_OVER for rest in names if rest not in outcomes})
            log.warning("page %s: %s stopped: another worker took the delivery over", page.dedup_key, action)
            return outcomes
        pager = pagers.get(name)
        if pager is None:
            if name not in PAGERS:
                log.warning(
                    "page %s: %r is not a known pager (known: %s)", page.dedup_key, name, sorted(PAGERS)
                )
            outcomes[name] = NOT_CONFIGURED
            continue
        try:
            getattr(pager, action)(page)
        except PagerError as exc:
            log.error("page %s: %s via %s failed: %s", page.dedup_key, action, name, exc)
            outcomes[name] = f"failed: {exc}"
        else:
            log.info("page %s: %s sent via %s", page.dedup_key, action, name)
            outcomes[name] = SENT
    if not delivered(outcomes):
        tried = [n for n in names if outcomes[n] != NOT_CONFIGURED]
        why = EVERY_PAGER_FAILED if tried else "no pager configured"
        outcomes[UNDELIVERABLE] = why
        log.error(
            "page %s undeliverable (%s; targets: %s): %s %s [%s] hosts=%s details=%s",
            page.dedup_key,
            why,
            ", ".join(names) or "none",
            action,
            page.summary,
            page.severity,
            ",".join(page.hosts) or "-",
            page.details,
        )
    return outcomes


def delivered(outcomes: Mapping[str, str]) -> bool:
    """Whether at least one pager took the page."""
    return any(outcome == SENT for outcome in outcomes.values())
