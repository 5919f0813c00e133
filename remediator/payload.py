"""Alertmanager webhook payloads (version "4"): schema validation and splitting into alerts."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import jsonschema

from remediator.hosts import is_valid_host_id


class PayloadError(ValueError):
    """The payload is malformed; ``field`` names where (e.g. ``alerts[3].labels``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class HostIdError(ValueError):
    """A host_id label fails validation (answered 422)."""

    def __init__(self, field: str, value: str) -> None:
        super().__init__(f"{field}: invalid host id")
        self.field = field
        self.value = value


@dataclass(frozen=True)
class Alert:
    """One alert of a grouped payload, reduced to what the remediator acts on."""

    status: str
    alertname: str
    host_id: str | None
    fingerprint: str
    labels: dict[str, str]
    starts_at: str | None


@cache
def _validator() -> jsonschema.protocols.Validator:
    text = resources.files("remediator").joinpath("schemas/alertmanager-webhook-v4.json").read_text()
    schema = json.loads(text)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _where(path: Any) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(body)"


def _fingerprint(labels: dict[str, str]) -> str:
    """Alertmanager's fingerprint is a hash of the label set; compute one when the sender omitted it."""
    blob = json.dumps(labels, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def parse_payload(body: Any) -> list[Alert]:
    """Validate ``body`` and return its alerts; PayloadError (400) or HostIdError (422) on bad input."""
    errors = sorted(_validator().iter_errors(body), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        raise PayloadError(_where(err.absolute_path), err.message[:300])
    alerts: list[Alert] = []
    for index, raw in enumerate(body["alerts"]):
        labels = raw["labels"]
        host_id = labels.get("host_id")
        if host_id is not None and not is_valid_host_id(host_id):
            raise HostIdError(f"alerts[{index}].labels.host_id", host_id)
        alerts.append(
            Alert(
                status=raw["status"],
                alertname=labels["alertname"],
                host_id=host_id,
                fingerprint=raw.get("fingerprint") or _fingerprint(labels),
                labels=dict(labels),
                starts_at=raw.get("startsAt"),
            )
        )
    return alerts
