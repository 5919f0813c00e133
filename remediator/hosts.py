"""Host ids: the one gate every outside value passes before it reaches a shell, a path or a key."""

from __future__ import annotations

import re
from pathlib import Path

from remediator.defaults import HOST_ID_PATTERN
from remediator.exceptions import InvalidHostId

_HOST_ID = re.compile(HOST_ID_PATTERN)


def is_valid_host_id(value: object) -> bool:
    # fullmatch, not match: "$" would accept a trailing newline.
    return isinstance(value, str) and _HOST_ID.fullmatch(value) is not None


def validate_host_id(value: object) -> str:
    """Return ``value`` if it is a valid host id, else raise InvalidHostId naming the rule."""
    if not is_valid_host_id(value):
        raise InvalidHostId(
            f"host id {str(value)[:80]!r} is invalid: it must match {HOST_ID_PATTERN} "
            "(letters, digits, '.', '_', '-', at most 63 characters, starting with a letter or digit)"
        )
    return value  # type: ignore[return-value]


def recovery_path(recovery_dir: str | Path, host_id: str) -> Path:
    """``<recovery_dir>/<host_id>``, refusing anything that would resolve outside ``recovery_dir``."""
    validate_host_id(host_id)
    root = Path(recovery_dir).resolve()
    path = (root / host_id).resolve()
    if path.parent != root:
        raise InvalidHostId(f"host id {host_id!r} would leave the recovery directory {root}")
    return path
