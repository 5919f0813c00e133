"""Alertmanager webhook payloads (version "4"): schema validation and splitting into alerts."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, Protocol

import jsonschema

from remediator.exceptions import HostIdError, PayloadError
from remediator.hosts import is_valid_host_id


@dataclass(frozen=True)
class Alert:
    """One alert of a grouped payload, reduced to what the remediator acts on."""

    status: str
    alertname: str
    host_id: str | None
    fingerprint: str


@cache
def _schema() -> dict[str, Any]:
    text = resources.files("remediator.web").joinpath("schemas/alertmanager-webhook-v4.json").read_text()
    return json.loads(text)


@cache
def _validator() -> jsonschema.protocols.Validator:
    schema = _schema()
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


# -- a quick check in front of jsonschema --------------------------------------------------------------
# jsonschema takes about 0.2 ms per alert (200 ms for a 1,000-alert payload, bench/bench_fanout.py).
# The webhook schema uses a handful of keywords, so it is compiled once into plain predicates that say
# True only where the schema holds (they may say False more often, e.g. for 1.0 as an integer): a
# body they accept is valid, anything else goes to jsonschema, which decides and words the error.
# A keyword outside that handful turns the quick check off rather than guess.
class Check(Protocol):
    """A compiled predicate. A Protocol, not a Callable, so the lambdas below may bind their
    arguments as defaults (``lambda v, n=arg: ...``), which a ``Callable[[Any], bool]`` rejects."""

    def __call__(self, value: Any, /) -> bool: ...


_ANNOTATIONS = frozenset({"$schema", "$id", "$defs", "title", "description"})
_TYPES: dict[str, type] = {"object": dict, "array": list, "string": str, "integer": int}


class _Unsupported(Exception):
    """The schema uses a keyword the quick check does not implement."""


def _same(value: Any, expected: Any) -> bool:
    return type(value) is type(expected) and value == expected


def _compile(schema: dict[str, Any], defs: dict[str, Any], depth: int = 0) -> Check:
    """A predicate true only for instances ``schema`` accepts; _Unsupported for keywords it lacks."""
    if depth > 16 or not isinstance(schema, dict):
        raise _Unsupported("nesting")
    checks: list[Check] = []
    for key, arg in schema.items():
        if key in _ANNOTATIONS:
            continue
        if key == "$ref":
            if not arg.startswith("#/$defs/") or arg.removeprefix("#/$defs/") not in defs:
                raise _Unsupported(f"$ref {arg}")
            checks.append(_compile(defs[arg.removeprefix("#/$defs/")], defs, depth + 1))
        elif key == "allOf":
            checks += [_compile(sub, defs, depth + 1) for sub in arg]
        elif key == "type" and arg in _TYPES:
            checks.append(lambda v, t=_TYPES[arg]: type(v) is t)
        elif key == "const":
            checks.append(lambda v, c=arg: _same(v, c))
        elif key == "enum":
            checks.append(lambda v, e=tuple(arg): any(_same(v, x) for x in e))
        elif key == "required":
            checks.append(lambda v, r=tuple(arg): type(v) is not dict or all(k in v for k in r))
        elif key == "properties":
            props = {name: _compile(sub, defs, depth + 1) for name, sub in arg.items()}
            checks.append(
                lambda v, p=props: type(v) is not dict or all(c(v[k]) for k, c in p.items() if k in v)
            )
        elif key == "additionalProperties" and not {"properties", "patternProperties"} & schema.keys():
            sub = _compile(arg, defs, depth + 1)
            checks.append(lambda v, c=sub: type(v) is not dict or all(c(x) for x in v.values()))
        elif key == "items" and isinstance(arg, dict):
            sub = _compile(arg, defs, depth + 1)
            checks.append(lambda v, c=sub: type(v) is not list or all(c(x) for x in v))
        elif key == "maxItems":
            checks.append(lambda v, n=arg: type(v) is not list or len(v) <= n)
        elif key == "maxLength":
            checks.append(lambda v, n=arg: type(v) is not str or len(v) <= n)
        elif key == "minimum":
            checks.append(lambda v, n=arg: type(v) not in (int, float) or v >= n)
        else:
            raise _Unsupported(key)
    return lambda v: all(c(v) for c in checks)


@cache
def _quick_check() -> Check | None:
    schema = _schema()
    try:
        return _compile(schema, schema.get("$defs", {}))
    except _Unsupported:
        return None


def _where(path: Any) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(body)"


def _fingerprint(labels: dict[str, str]) -> str:
    """Alertmanager's fingerprint is a hash of the label set; compute one when the sender omitted it."""
    blob = json.dumps(labels, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


LONE_SURROGATE = "holds a lone UTF-16 surrogate (a \\udXXX escape); send valid Unicode"


def _unencodable(value: str) -> bool:
    """True for a lone surrogate: JSON's ``\\u`` escapes allow it, UTF-8 (and so Redis) cannot carry it."""
    if value.isascii():
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _check_encodable(index: int, raw: dict[str, Any]) -> None:
    """PayloadError naming the first kept string of alert ``index`` that holds a lone surrogate."""
    for name, value in raw["labels"].items():
        if _unencodable(name) or _unencodable(value):
            raise PayloadError(f"alerts[{index}].labels.{name}", LONE_SURROGATE)
    for name in ("fingerprint", "startsAt"):
        value = raw.get(name)
        if isinstance(value, str) and _unencodable(value):
            raise PayloadError(f"alerts[{index}].{name}", LONE_SURROGATE)


def parse_payload(body: Any) -> list[Alert]:
    """Validate ``body`` and return its alerts; PayloadError (400) or HostIdError (422) on bad input."""
    quick = _quick_check()
    if quick is None or not quick(body):
        errors = sorted(_validator().iter_errors(body), key=lambda e: list(e.absolute_path))
        if errors:
            err = errors[0]
            raise PayloadError(_where(err.absolute_path), err.message[:300])
    alerts: list[Alert] = []
    for index, raw in enumerate(body["alerts"]):
        labels = raw["labels"]
        host_id = labels.get("host_id")
        if host_id is not None and not is_valid_host_id(host_id):
            raise HostIdError(f"alerts[{index}].labels.host_id")
        _check_encodable(index, raw)
        alerts.append(
            Alert(
                status=raw["status"],
                alertname=labels["alertname"],
                host_id=host_id,
                fingerprint=raw.get("fingerprint") or _fingerprint(labels),
            )
        )
    return alerts
