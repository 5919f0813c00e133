"""JSON schemas for the custom resources the chart renders: Prometheus Operator's and KEDA's.

kubernetes-validate knows only the built-in Kubernetes kinds. These schemas cover the fields of
ServiceMonitor, PrometheusRule (monitoring.coreos.com/v1) and AlertmanagerConfig
(monitoring.coreos.com/v1alpha1) as the operator's API reference names and types them, and of
KEDA's ScaledObject and TriggerAuthentication (keda.sh/v1alpha1) with the metadata its redis and
redis-sentinel scalers read (KEDA's scaler reference), closed with ``additionalProperties: false``
so a misspelt or misplaced field fails. They are written for this
chart's use, not a copy of the CRDs: a field the operator supports but the chart never renders may be
missing, and adding it here is the fix when the chart starts using it.
"""

from __future__ import annotations

from typing import Any

# Prometheus durations, as the CRDs' patterns spell them.
DURATION = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
LABEL_NAME = r"^[a-zA-Z_][a-zA-Z0-9_]*$"


def _closed(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        schema["required"] = required
    return schema


_STRING = {"type": "string"}
_BOOL = {"type": "boolean"}
_DURATION = {"type": "string", "pattern": DURATION}
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_OBJECT = {"type": "object"}
_SECRET_KEY = _closed({"name": _STRING, "key": _STRING, "optional": _BOOL}, ["key"])
_LABEL_SELECTOR = _closed(
    {
        "matchLabels": _STRING_MAP,
        "matchExpressions": {
            "type": "array",
            "items": _closed(
                {"key": _STRING, "operator": _STRING, "values": {"type": "array", "items": _STRING}},
                ["key", "operator"],
            ),
        },
    }
)
_HEADER = {"apiVersion": _STRING, "kind": _STRING, "metadata": _OBJECT}

SERVICE_MONITOR = _closed(
    {
        **_HEADER,
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "spec": _closed(
            {
                "jobLabel": _STRING,
                "targetLabels": {"type": "array", "items": _STRING},
                "podTargetLabels": {"type": "array", "items": _STRING},
                "sampleLimit": {"type": "integer", "minimum": 0},
                "selector": _LABEL_SELECTOR,
                "namespaceSelector": _closed(
                    {"any": _BOOL, "matchNames": {"type": "array", "items": _STRING}}
                ),
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": _closed(
                        {
                            "port": _STRING,
                            "targetPort": {"anyOf": [{"type": "integer"}, {"type": "string"}]},
                            "path": {"type": "string", "pattern": "^/"},
                            "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
                            "interval": _DURATION,
                            "scrapeTimeout": _DURATION,
                            "honorLabels": _BOOL,
                            "honorTimestamps": _BOOL,
                            "authorization": _closed({"type": _STRING, "credentials": _SECRET_KEY}),
                            "tlsConfig": _OBJECT,
                            "relabelings": {"type": "array", "items": _OBJECT},
                            "metricRelabelings": {"type": "array", "items": _OBJECT},
                            "params": _OBJECT,
                        }
                    ),
                },
            },
            ["selector", "endpoints"],
        ),
    },
    ["apiVersion", "kind", "metadata", "spec"],
)

PROMETHEUS_RULE = _closed(
    {
        **_HEADER,
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"},
        "spec": _closed(
            {
                "groups": {
                    "type": "array",
                    "items": _closed(
                        {
                            "name": {"type": "string", "minLength": 1},
                            "interval": _DURATION,
                            "query_offset": _DURATION,
                            "limit": {"type": "integer"},
                            "labels": _STRING_MAP,
                            "partial_response_strategy": _STRING,
                            "rules": {
                                "type": "array",
                                "items": {
                                    **_closed(
                                        {
                                            "alert": {"type": "string", "pattern": LABEL_NAME},
                                            "record": _STRING,
                                            "expr": {"type": "string", "minLength": 1},
                                            "for": _DURATION,
                                            "keep_firing_for": _DURATION,
                                            "labels": _STRING_MAP,
                                            "annotations": _STRING_MAP,
                                        },
                                        ["expr"],
                                    ),
                                    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                                },
                            },
                        },
                        ["name"],
                    ),
                }
            }
        ),
    },
    ["apiVersion", "kind", "metadata", "spec"],
)

_MATCHER = _closed(
    {
        "name": {"type": "string", "minLength": 1},
        "value": _STRING,
        "matchType": {"enum": ["!=", "=", "=~", "!~"]},
    },
    ["name"],
)
_HTTP_CONFIG = _closed(
    {
        "authorization": _closed({"type": _STRING, "credentials": _SECRET_KEY}),
        "basicAuth": _OBJECT,
        "bearerTokenSecret": _SECRET_KEY,
        "tlsConfig": _OBJECT,
        "proxyURL": _STRING,
        "followRedirects": _BOOL,
    }
)
_ROUTE: dict[str, Any] = _closed(
    {
        "receiver": _STRING,
        "matchers": {"type": "array", "items": _MATCHER},
        "groupBy": {"type": "array", "items": _STRING},
        "groupWait": _DURATION,
        "groupInterval": _DURATION,
        "repeatInterval": _DURATION,
        "continue": _BOOL,
        "routes": {"type": "array"},
        "muteTimeIntervals": {"type": "array", "items": _STRING},
        "activeTimeIntervals": {"type": "array", "items": _STRING},
    }
)

ALERTMANAGER_CONFIG = _closed(
    {
        **_HEADER,
        "apiVersion": {"const": "monitoring.coreos.com/v1alpha1"},
        "kind": {"const": "AlertmanagerConfig"},
        "spec": _closed(
            {
                "route": _ROUTE,
                "receivers": {
                    "type": "array",
                    "items": _closed(
                        {
                            "name": {"type": "string", "minLength": 1},
                            "webhookConfigs": {
                                "type": "array",
                                "items": _closed(
                                    {
                                        "url": {"type": "string", "pattern": "^https?://"},
                                        "urlSecret": _SECRET_KEY,
                                        "sendResolved": _BOOL,
                                        "maxAlerts": {"type": "integer", "minimum": 0},
                                        "timeout": _DURATION,
                                        "httpConfig": _HTTP_CONFIG,
                                    }
                                ),
                            },
                        },
                        ["name"],
                    ),
                },
                "inhibitRules": {"type": "array", "items": _OBJECT},
                "muteTimeIntervals": {"type": "array", "items": _OBJECT},
            }
        ),
    },
    ["apiVersion", "kind", "metadata", "spec"],
)

_INT32 = {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}
_NUMERIC = {"type": "string", "pattern": "^[0-9]+$"}  # KEDA trigger metadata values are strings
_BOOLEAN_STRING = {"enum": ["true", "false"]}
# The metadata each scaler the chart uses reads (anything else is a typo KEDA would ignore).
_REDIS_LIST_METADATA = {
    "listName": {"type": "string", "minLength": 1},
    "listLength": _NUMERIC,
    "activationListLength": _NUMERIC,
    "databaseIndex": _NUMERIC,
    "enableTLS": _BOOLEAN_STRING,
    "unsafeSsl": _BOOLEAN_STRING,
    "usernameFromEnv": _STRING,
    "passwordFromEnv": _STRING,
}
REDIS_TRIGGER_METADATA = _closed(
    {
        **_REDIS_LIST_METADATA,
        "address": {"type": "string", "pattern": r"^[^\s:,]+:[0-9]+$"},
        "host": _STRING,
        "port": _NUMERIC,
        "addressFromEnv": _STRING,
        "hostFromEnv": _STRING,
        "portFromEnv": _STRING,
    },
    ["listName", "listLength"],
)
REDIS_SENTINEL_TRIGGER_METADATA = _closed(
    {
        **_REDIS_LIST_METADATA,
        "addresses": {"type": "string", "pattern": r"^[^\s:,]+:[0-9]+( *, *[^\s:,]+:[0-9]+)*$"},
        "hosts": _STRING,
        "ports": _STRING,
        "addressesFromEnv": _STRING,
        "hostsFromEnv": _STRING,
        "portsFromEnv": _STRING,
        "sentinelUsernameFromEnv": _STRING,
        "sentinelPasswordFromEnv": _STRING,
        "sentinelMaster": {"type": "string", "minLength": 1},
        "sentinelMasterFromEnv": _STRING,
    },
    ["listName", "listLength"],
)
_TRIGGER = {
    **_closed(
        {
            "type": {"type": "string", "minLength": 1},
            "name": _STRING,
            "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
            "authenticationRef": _closed(
                {
                    "name": {"type": "string", "minLength": 1},
                    "kind": {"enum": ["TriggerAuthentication", "ClusterTriggerAuthentication"]},
                },
                ["name"],
            ),
            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
            "useCachedMetrics": _BOOL,
        },
        ["type", "metadata"],
    ),
    "allOf": [
        {
            "if": {"properties": {"type": {"const": "redis"}}},
            "then": {"properties": {"metadata": REDIS_TRIGGER_METADATA}},
        },
        {
            "if": {"properties": {"type": {"const": "redis-sentinel"}}},
            "then": {"properties": {"metadata": REDIS_SENTINEL_TRIGGER_METADATA}},
        },
    ],
}

SCALED_OBJECT = _closed(
    {
        **_HEADER,
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "spec": _closed(
            {
                "scaleTargetRef": _closed(
                    {
                        "apiVersion": _STRING,
                        "kind": _STRING,
                        "name": {"type": "string", "minLength": 1},
                        "envSourceContainerName": _STRING,
                    },
                    ["name"],
                ),
                "pollingInterval": _INT32,
                "cooldownPeriod": _INT32,
                "initialCooldownPeriod": _INT32,
                "idleReplicaCount": _INT32,
                "minReplicaCount": _INT32,
                "maxReplicaCount": _INT32,
                "fallback": _closed(
                    {"failureThreshold": _INT32, "replicas": _INT32, "behavior": _STRING},
                    ["failureThreshold", "replicas"],
                ),
                "advanced": _closed(
                    {
                        "restoreToOriginalReplicaCount": _BOOL,
                        "horizontalPodAutoscalerConfig": _closed({"name": _STRING, "behavior": _OBJECT}),
                        "scalingModifiers": _OBJECT,
                    }
                ),
                "triggers": {"type": "array", "minItems": 1, "items": _TRIGGER},
            },
            ["scaleTargetRef", "triggers"],
        ),
    },
    ["apiVersion", "kind", "metadata", "spec"],
)

TRIGGER_AUTHENTICATION = _closed(
    {
        **_HEADER,
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "TriggerAuthentication"},
        "spec": _closed(
            {
                "secretTargetRef": {
                    "type": "array",
                    "items": _closed(
                        {
                            "parameter": {"type": "string", "minLength": 1},
                            "name": {"type": "string", "minLength": 1},
                            "key": {"type": "string", "minLength": 1},
                        },
                        ["parameter", "name", "key"],
                    ),
                },
                "env": {"type": "array", "items": _OBJECT},
                "configMapTargetRef": {"type": "array", "items": _OBJECT},
                "podIdentity": _OBJECT,
                "hashiCorpVault": _OBJECT,
            }
        ),
    },
    ["apiVersion", "kind", "metadata", "spec"],
)

CRD_SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICE_MONITOR,
    ("monitoring.coreos.com/v1", "PrometheusRule"): PROMETHEUS_RULE,
    ("monitoring.coreos.com/v1alpha1", "AlertmanagerConfig"): ALERTMANAGER_CONFIG,
    ("keda.sh/v1alpha1", "ScaledObject"): SCALED_OBJECT,
    ("keda.sh/v1alpha1", "TriggerAuthentication"): TRIGGER_AUTHENTICATION,
}
