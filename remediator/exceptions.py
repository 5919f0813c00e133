"""Every exception the remediator raises on purpose, in one flat list."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from remediator.rules.source import Problem


class RemediatorError(Exception):
    """Base of the remediator's own errors."""


class ConfigError(RemediatorError):
    """A configuration variable is missing or malformed; the message names it."""


class InvalidHostId(RemediatorError):
    """A host id does not match the allowed pattern and must never reach a shell, path or key."""


class LockNotAcquired(RemediatorError):
    """Another worker holds the host's lock."""


class LockLost(RemediatorError):
    """The host's lock expired or was taken over while a step ran; the step must not commit."""


class Frozen(RemediatorError):
    """The automation is frozen (remediator freeze): the mutation waits until it is unfrozen."""


class CoordinatorError(RemediatorError):
    """The coordinator answered with an error or could not be reached."""


class CoordinatorUnavailable(CoordinatorError):
    """The coordinator did not answer (connection error, timeout) or answered 5xx: a wait, not a "no"."""


class CoordinatorMaybeApplied(CoordinatorUnavailable):
    """A call that must not be repeated blindly (a data-loss record, a retirement) reached the
    coordinator but got no usable answer (5xx, timeout, dropped connection): it may have been applied."""


class SSHError(RemediatorError):
    """An SSH connection or remote command failed."""


class RulesError(RemediatorError):
    """A rules file failed validation; the message names the file, line and key."""


class PagerError(RemediatorError):
    """A pager could not deliver a page."""


class ProviderError(RemediatorError):
    """A cloud provider API answered with an error or could not be reached."""


class RulesFileError(RulesError):
    """A rules or rule-test file is invalid; ``problems`` holds every finding (file, line, key, message)."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(str(problem) for problem in self.problems))


class RulesSyntaxError(RulesFileError):
    """A rules file cannot be read or is not YAML (or has duplicate or non-string keys)."""


class RulesSchemaError(RulesFileError):
    """A rules file does not match rules/schema.json."""


class RulesMeaningError(RulesFileError):
    """A rules file matches the schema but means nothing sound: unknown fact, type mismatch, impossible
    threshold, duplicate rule name."""


class RuleTestFileError(RulesFileError):
    """A rule unit-test file (``remediator rules test``) is malformed."""


class PayloadError(RemediatorError, ValueError):
    """The payload is malformed; ``field`` names where (e.g. ``alerts[3].labels``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class HostIdError(RemediatorError, ValueError):
    """A host_id label fails validation (answered 422)."""

    def __init__(self, field: str) -> None:
        super().__init__(f"{field}: invalid host id")
        self.field = field


class TransportFailure(RemediatorError):
    """No answer at all after every attempt; the message is safe to show (no URL path, no secret)."""


class LimitUnavailable(RemediatorError):
    """A fleet-wide limit (remediator/limits.py) gave no slot in time, or its Redis did not answer."""
