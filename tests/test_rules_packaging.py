"""The schema is sound, the facts documented, and the rules files ship in the wheel."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import jsonschema

from remediator.rules import FACTS
from remediator.rules.facts import type_name

REPO = Path(__file__).resolve().parent.parent


def test_docs_list_exactly_the_facts_of_the_code() -> None:
    text = (REPO / "docs" / "rules.md").read_text(encoding="utf-8")
    section = text.split("\n## Facts\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \| (\w+) \| (\w+) \| ", section, flags=re.MULTILINE)
    assert rows == [(name, type_name(spec), spec.scope) for name, spec in FACTS.items()]


def test_schema_is_valid_draft_2020_12_and_closed_everywhere() -> None:
    schema = json.loads((REPO / "rules" / "schema.json").read_text(encoding="utf-8"))
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)

    def objects(node: Any) -> list[dict[str, Any]]:
        if isinstance(node, dict):
            own = [node] if "properties" in node else []
            return own + [found for value in node.values() for found in objects(value)]
        if isinstance(node, list):
            return [found for value in node for found in objects(value)]
        return []

    closed = [node for node in objects(schema) if node is not schema["properties"]]
    assert closed and all(node.get("additionalProperties") is False for node in closed)


def test_wheel_contains_the_rules_files(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md", "remediator", "workers", "rules"):
        if (REPO / name).is_dir():
            shutil.copytree(
                REPO / name, source / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__")
            )
        elif (REPO / name).exists():
            shutil.copy(REPO / name, source / name)
    wheels = tmp_path / "wheels"
    # No build isolation: pip would download setuptools into a fresh build env; tests stay offline.
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet"]
    subprocess.run(
        [*pip_wheel, "-w", str(wheels), str(source)],
        check=True,
        capture_output=True,
        timeout=240,
    )
    (wheel,) = wheels.glob("ringrift_remediator-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        for name in ("default.yaml", "schema.json"):
            packaged = archive.read(f"remediator/shipped_rules/{name}")
            assert packaged == (REPO / "rules" / name).read_bytes()
