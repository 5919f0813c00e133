"""ringrift-remediator: the CriticalSyncHosts runbook as safe, audited automation."""

from remediator.app import create_app

__all__ = ["create_app"]
__version__ = "0.1.0"
