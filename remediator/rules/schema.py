"""The rules file's JSON Schema, shipped in the package and loaded once, and schema findings as Problems."""

from __future__ import annotations

import functools
import json
from importlib import resources
from importlib.abc import Traversable
from typing import Any

import jsonschema

from remediator.rules.source import Document, KeyPath, Problem

SHIPPED_DIR = "shipped_rules"  # inside the remediator package; a symlink to the repository's rules/
SCHEMA_FILE = "schema.json"
DEFAULT_RULES_FILE = "default.yaml"

_JSON_TYPES = {
    "object": "a mapping",
    "array": "a list",
    "string": "a string",
    "number": "a number",
    "integer": "an integer",
    "boolean": "true or false",
    "null": "empty",
}
_TYPE_NAMES = {
    dict: "a mapping",
    list: "a list",
    str: "a string",
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    type(None): "empty",
}


def shipped(name: str) -> Traversable:
    """A file shipped in ``remediator/shipped_rules`` (works from a checkout and from an installed wheel)."""
    return resources.files("remediator") / SHIPPED_DIR / name


@functools.cache
def validator() -> jsonschema.protocols.Validator:
    """The Draft 2020-12 validator of rules/schema.json, built on first use and kept."""
    schema = json.loads(shipped(SCHEMA_FILE).read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def schema_problems(
    document: Document, against: jsonschema.protocols.Validator | None = None
) -> list[Problem]:
    """Every place ``document`` breaks the rules schema (or ``against``), one Problem each, in file order."""
    found: dict[tuple[KeyPath, str], Problem] = {}
    for error in (against or validator()).iter_errors(document.data):
        for path, message in _explain(error):
            found.setdefault((path, message), document.problem(path, message))
    return sorted(found.values(), key=lambda problem: (problem.line, problem.key))


def _explain(error: jsonschema.ValidationError) -> list[tuple[KeyPath, str]]:
    """The key paths at fault, each with a message a person can act on."""
    path: KeyPath = tuple(error.absolute_path)
    schema = error.schema if isinstance(error.schema, dict) else {}
    # Both are set on an error that validation raised (Unset only on one built by hand).
    value: Any = error.instance
    expected: Any = error.validator_value
    kind = error.validator
    if kind == "additionalProperties":
        allowed = sorted(schema.get("properties", {}))
        return [
            ((*path, key), f"unknown key {key!r} (allowed: {', '.join(allowed)})")
            for key in value
            if key not in allowed
        ]
    if kind == "required":
        present = value if isinstance(value, dict) else {}
        missing = [name for name in expected if name not in present]
        return [(path, f"missing required key(s): {', '.join(missing)}")]
    if kind == "type":
        wanted = expected if isinstance(expected, list) else [expected]
        return [
            (path, f"must be {' or '.join(_JSON_TYPES[name] for name in wanted)}, not {_describe(value)}")
        ]
    if kind == "enum" and "propertyNames" in error.schema_path:
        return [((*path, value), f"unknown key {value!r} (allowed: {', '.join(expected)})")]
    if kind == "enum":
        options = ", ".join(str(option) for option in expected)
        return [(path, f"{value!r} is not one of: {options}")]
    if kind == "const" and "description" in schema:
        return [(path, f"{_show(value)} is not allowed: {schema['description']}")]
    if kind == "const":
        return [(path, f"must be {expected!r}, not {value!r}")]
    if kind in ("minProperties", "maxProperties", "propertyNames") and "description" in schema:
        return [(path, schema["description"])]
    if kind in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        relation = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}[kind]
        return [(path, f"must be {relation} {expected}, not {value!r}")]
    if kind == "uniqueItems":
        return [(path, "lists the same item more than once")]
    if kind == "minItems":
        return [(path, f"must list at least {expected} item(s)")]
    if kind == "pattern":
        return [(path, f"{value!r} does not match {expected!r}")]
    return [(path, error.message)]


def _describe(value: Any) -> str:
    name = _TYPE_NAMES.get(type(value), type(value).__name__)
    return name if value is None or isinstance(value, dict | list) else f"{name} ({_show(value)})"


def _show(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else repr(value)
