"""Redis key templates: no valid host id can make a per-host key equal a global one."""

from __future__ import annotations

import re

from remediator import keys, metrics
from remediator.defaults import HOST_ID_PATTERN

GLOBAL = (*keys.GLOBAL, metrics.COUNTS)


def _as_regex(template: str) -> re.Pattern[str]:
    """The template as a regex whose {0} matches any valid host id (and {1} anything)."""
    host = HOST_ID_PATTERN.removeprefix("^").removesuffix("$")
    parts = re.split(r"(\{\d\})", template)
    body = "".join(
        f"(?:{host})" if part == "{0}" else ".+" if re.fullmatch(r"\{\d\}", part) else re.escape(part)
        for part in parts
    )
    return re.compile(body)


def test_no_per_host_key_can_equal_a_global_key_for_any_valid_host_id():
    for template in keys.PER_HOST:
        pattern = _as_regex(template)
        clashes = [g for g in GLOBAL if pattern.fullmatch(g)]
        assert clashes == [], f"{template} yields global key(s) {clashes} for some host id"


def test_the_hosts_named_like_global_things_get_keys_of_their_own():
    for name in ("fleet", "sweeper", "monitor", "hosts", "paused", "incidents", "pages", "metrics"):
        assert {template.format(name, "x") for template in keys.PER_HOST}.isdisjoint(GLOBAL)


def test_every_template_is_listed_once_as_per_host_or_global():
    templates = {
        value
        for name, value in vars(keys).items()
        if name.isupper() and isinstance(value, str) and name != "PREFIX"
    }
    per_name = {keys.INCIDENT, keys.PAGE, keys.PAGE_LOCK, keys.BUDGET, keys.BUDGET_ACK, keys.LEARNING_TIMES}
    per_name |= {keys.LISTING, keys.LISTING_LOCK, keys.PREFETCH_CLAIM, keys.PREFETCHED}
    listed = set(keys.PER_HOST) | set(keys.GLOBAL) | per_name
    assert templates == listed
    assert all(t.startswith(keys.PREFIX + ":") for t in templates)
    assert len(keys.PER_HOST) == len(set(keys.PER_HOST))
