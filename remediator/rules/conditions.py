"""Evaluating conditions against facts: plain comparisons and boolean logic, nothing executed.

A comparison on a fact that is missing from the facts (absent or None) is false, and so is one on a
value of the wrong type for its fact (logged: that is a bug in whoever produced the facts). ``not``
turns such a false into true, so a rule that must not fire on missing facts compares directly, e.g.
``{fact: ssh_reachable, eq: false}`` rather than ``{not: {fact: ssh_reachable, eq: true}}``.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Callable, Mapping
from typing import Any

from remediator.rules.facts import FACTS, fits
from remediator.rules.types import AllOf, AnyOf, Comparison, Condition, Not

logger = logging.getLogger("remediator.rules")

_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "eq": operator.eq,
    "ne": operator.ne,
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
    "in": lambda fact, values: fact in values,
}


def evaluate(condition: Condition, facts: Mapping[str, Any]) -> bool:
    """Whether ``condition`` holds for ``facts``."""
    if isinstance(condition, Comparison):
        return _compare(condition, facts)
    if isinstance(condition, AllOf):
        return all(evaluate(child, facts) for child in condition.conditions)
    if isinstance(condition, AnyOf):
        return any(evaluate(child, facts) for child in condition.conditions)
    if isinstance(condition, Not):
        return not evaluate(condition.condition, facts)
    raise TypeError(f"not a condition: {condition!r}")


def _compare(comparison: Comparison, facts: Mapping[str, Any]) -> bool:
    value = facts.get(comparison.fact)
    if value is None:
        return False
    spec = FACTS.get(comparison.fact)
    if spec is not None and not fits(spec, value):
        logger.warning(
            "fact %s=%r is not of type %s; comparisons on it are false",
            comparison.fact,
            value,
            spec.type.__name__,
        )
        return False
    try:
        return bool(_COMPARE[comparison.op](value, comparison.value))
    except TypeError:  # a fact outside the vocabulary, compared across types
        return False
