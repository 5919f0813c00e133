"""Bearer-token and basic-auth checks, compared in constant time."""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Iterable


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode("utf-8"))


def check_authorization(header: str | None, expected: str | None, *, allow_basic: bool = True) -> bool:
    """True when ``header`` carries ``expected`` as a Bearer token or (if allowed) a basic-auth password.

    With no expected token configured every request is refused: an unauthenticated remediator that
    can restart agents and retire hosts is never the default.
    """
    if not expected or not header:
        return False
    scheme, _, value = header.strip().partition(" ")
    scheme = scheme.lower()
    value = value.strip()
    if scheme == "bearer":
        return _same(value, expected)
    if scheme == "basic" and allow_basic:
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        _, sep, password = decoded.partition(":")
        return bool(sep) and _same(password, expected)
    return False


def check_any(header: str | None, tokens: Iterable[str | None], *, allow_basic: bool = True) -> bool:
    """True when ``header`` carries one of ``tokens``; every token is compared, whichever matches."""
    results = [check_authorization(header, token, allow_basic=allow_basic) for token in tokens]
    return any(results)
