"""Every exception the remediator raises on purpose, in one flat list."""


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


class CoordinatorError(RemediatorError):
    """The coordinator answered with an error or could not be reached."""


class SSHError(RemediatorError):
    """An SSH connection or remote command failed."""


class RulesError(RemediatorError):
    """A rules file failed validation; the message names the file, line and key."""


class PagerError(RemediatorError):
    """A pager could not deliver a page."""
