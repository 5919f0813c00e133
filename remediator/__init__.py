"""ringrift-remediator: the CriticalSyncHosts runbook as safe, audited automation."""

from remediator.web.app import create_app

__all__ = ["create_app"]
__version__ = "0.2.0"  # the one place the version is written (setup.cfg reads it)
