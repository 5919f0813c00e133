"""``GET /openapi.json``: the OpenAPI 3.1 description of every HTTP endpoint of the app.

The document is ``schemas/openapi.json``; the webhook body schema is filled in from the receiver's own
``schemas/alertmanager-webhook-v4.json`` so the two cannot drift. ``tests/test_openapi.py`` keeps it
true: every route is described, and real answers validate against it.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from flask import Blueprint

bp = Blueprint("openapi", __name__)

WEBHOOK_SCHEMA = "AlertmanagerWebhookV4"


def _load(name: str) -> dict[str, Any]:
    return json.loads(resources.files("remediator.web").joinpath("schemas", name).read_text(encoding="utf-8"))


def _rewrite_refs(node: Any, old: str, new: str) -> Any:
    if isinstance(node, dict):
        return {
            k: (
                new + v.removeprefix(old)
                if k == "$ref" and isinstance(v, str) and v.startswith(old)
                else _rewrite_refs(v, old, new)
            )
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_rewrite_refs(v, old, new) for v in node]
    return node


@cache
def _spec() -> dict[str, Any]:
    spec = _load("openapi.json")
    webhook = _load("alertmanager-webhook-v4.json")
    # Hoist the schema's own $defs into components, so every $ref resolves from the document root
    # (OpenAPI tools rarely honour an embedded $id).
    for key in ("$schema", "$id"):
        webhook.pop(key, None)
    prefix = f"#/components/schemas/{WEBHOOK_SCHEMA}."
    schemas = spec["components"]["schemas"]
    for name, definition in webhook.pop("$defs", {}).items():
        schemas[f"{WEBHOOK_SCHEMA}.{name}"] = _rewrite_refs(definition, "#/$defs/", prefix)
    schemas[WEBHOOK_SCHEMA] = _rewrite_refs(webhook, "#/$defs/", prefix)
    return spec


@bp.get("/openapi.json")
def openapi_json() -> dict[str, Any]:
    return _spec()
