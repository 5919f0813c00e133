"""The compiled quick check in front of jsonschema never accepts a body the schema rejects."""

from __future__ import annotations

from helpers import alert, payload
from hypothesis import given, settings
from hypothesis import strategies as st

from remediator.web.payload import _quick_check, _validator

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
FIELDS = [
    "version",
    "status",
    "alerts",
    "groupKey",
    "truncatedAlerts",
    "groupLabels",
    "commonLabels",
    "receiver",
    "externalURL",
]
ALERT_FIELDS = ["status", "labels", "annotations", "startsAt", "fingerprint", "endsAt"]


@st.composite
def mutated_payloads(draw):
    """Valid payloads with a few fields (top-level, per alert, per label) replaced by arbitrary JSON."""
    body = payload([alert(f"h{i}") for i in range(draw(st.integers(0, 3)))])
    for _ in range(draw(st.integers(0, 3))):
        where = draw(st.sampled_from(["top", "alert", "label"]))
        if where == "top":
            body[draw(st.sampled_from(FIELDS))] = draw(json_values)
        elif isinstance(body["alerts"], list) and body["alerts"]:
            target = draw(st.sampled_from(body["alerts"]))
            if not isinstance(target, dict):
                continue
            if where == "alert":
                target[draw(st.sampled_from(ALERT_FIELDS))] = draw(json_values)
            elif isinstance(target.get("labels"), dict):
                target["labels"][draw(st.sampled_from(["alertname", "host_id", "x"]))] = draw(json_values)
    return body


def test_the_quick_check_is_compiled_for_the_shipped_schema():
    assert _quick_check() is not None  # else every body silently takes the slow path


@settings(max_examples=1500, deadline=None)
@given(mutated_payloads() | json_values)
def test_quick_check_accepts_only_what_jsonschema_accepts(body):
    if _quick_check()(body):
        assert not list(_validator().iter_errors(body)), body


def test_quick_check_accepts_an_ordinary_valid_payload():
    assert _quick_check()(payload([alert("h1"), alert(None)]))
