"""``GET /openapi.json``: the OpenAPI 3.1 description of every HTTP endpoint of the app.

The document is ``schemas/openapi.json``; the webhook body schema is filled in from the receiver's own
``schemas/alertmanager-webhook-v4.json`` so the two cannot drift. ``tests/test_openapi.py`` keeps it
true: every route is described, and real answers validate against it.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from importlib import resources
from typing import Any

from flask import Blueprint

bp = Blueprint("openapi", __name__)

WEBHOOK_SCHEMA = "AlertmanagerWebhookV4"


def _load(name: str) -> dict[str, Any]:
    return json.loads(resources.files("remediator").joinpath("schemas", name).read_text(encoding="utf-8"))


@cache
def _spec() -> dict[str, Any]:
    spec = _load("openapi.json")
    webhook = _load("alertmanager-webhook-v4.json")
    webhook.pop("$schema", None)  # an OpenAPI 3.1 schema object is 2020-12 already
    spec["components"]["schemas"][WEBHOOK_SCHEMA] = webhook
    return spec


def openapi_spec() -> dict[str, Any]:
    """The full OpenAPI document (a copy: callers may change it)."""
    return copy.deepcopy(_spec())


@bp.get("/openapi.json")
def openapi_json() -> dict[str, Any]:
    return _spec()
