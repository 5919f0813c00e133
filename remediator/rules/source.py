"""YAML with line numbers: ``yaml.safe_load`` semantics, plus where every key and item sits in the file.

Errors a person reads name the line, so loading keeps a map from each key path (``("rules", 2,
"when", "fact")``) to the line it starts on. Duplicate keys and non-string keys, which ``safe_load``
would silently accept, are refused here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from remediator.exceptions import RulesSyntaxError

KeyPath = tuple[str | int, ...]

_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_MAX_DEPTH = 64  # nesting levels walked; deeper files are refused (and recursive aliases with them)
_MAX_NODES = 100_000  # nodes walked, aliases expanded; bounds "billion laughs" alias bombs


@dataclass(frozen=True)
class Problem:
    """One finding in a file: where it is (file, line, key path) and what is wrong."""

    source: str
    line: int
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.key}: {self.message}"


@dataclass(frozen=True)
class Document:
    """A parsed YAML document and the line of every key path in it."""

    source: str
    data: Any
    lines: Mapping[KeyPath, int]

    def line_of(self, path: KeyPath) -> int:
        """The line of ``path``, or of its nearest ancestor the file spells out."""
        for end in range(len(path), -1, -1):
            line = self.lines.get(tuple(path[:end]))
            if line is not None:
                return line
        return 1

    def problem(self, path: KeyPath, message: str) -> Problem:
        """A finding at ``path``."""
        return Problem(self.source, self.line_of(path), format_path(path), message)


def format_path(path: KeyPath) -> str:
    """``("rules", 2, "when", "fact")`` → ``rules[2].when.fact``; the root is ``(top level)``."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def parse_yaml(text: str, source: str) -> Document:
    """Parse one YAML document as ``yaml.safe_load`` would, recording the line of every key path."""
    loader = yaml.SafeLoader(text)
    lines: dict[KeyPath, int] = {(): 1}
    problems: list[Problem] = []
    try:
        node = loader.get_single_node()
        if node is not None:
            # Walk before constructing: construction flattens merge keys (<<) into the node in place.
            lines[()] = node.start_mark.line + 1
            _walk(node, (), lines, problems, source, [0])
            if problems:
                raise RulesSyntaxError(problems)
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = mark.line + 1 if mark else 1
        what = " ".join(part for part in (error.context, error.problem) if part)
        raise RulesSyntaxError([Problem(source, line, "(top level)", f"not valid YAML: {what}")]) from None
    except yaml.YAMLError as error:
        raise RulesSyntaxError([Problem(source, 1, "(top level)", f"not valid YAML: {error}")]) from None
    finally:
        loader.dispose()
    return Document(source, data, lines)


def read_document(path: str, text: str | None = None) -> Document:
    """Read and parse the file at ``path`` (``text`` given: parse that instead, reporting ``path``)."""
    if text is None:
        try:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
        except (OSError, UnicodeDecodeError) as error:
            raise RulesSyntaxError(
                [Problem(path, 1, "(top level)", f"cannot read the file: {error}")]
            ) from None
    return parse_yaml(text, path)


def _walk(
    node: yaml.Node,
    path: KeyPath,
    lines: dict[KeyPath, int],
    problems: list[Problem],
    source: str,
    walked: list[int],
) -> None:
    walked[0] += 1
    if len(path) > _MAX_DEPTH or walked[0] > _MAX_NODES:
        if not problems:
            line = node.start_mark.line + 1
            limit = (
                f"nested deeper than {_MAX_DEPTH} levels or larger than {_MAX_NODES} nodes (aliases expanded)"
            )
            problems.append(Problem(source, line, format_path(path), limit))
        return
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if key_node.tag == _MERGE_TAG:
                continue
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != _STR_TAG:
                shown = key_node.value if isinstance(key_node, yaml.ScalarNode) else "a collection"
                problems.append(
                    Problem(
                        source,
                        line,
                        format_path(path),
                        f"key {shown!r} is not read as a string by YAML; put it in quotes",
                    )
                )
                continue
            key = key_node.value
            if key in seen:
                problems.append(
                    Problem(
                        source,
                        line,
                        format_path((*path, key)),
                        f"duplicate key (first given on line {seen[key]}); YAML would silently keep the last",
                    )
                )
                continue
            seen[key] = line
            lines[(*path, key)] = line
            _walk(value_node, (*path, key), lines, problems, source, walked)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[(*path, index)] = item.start_mark.line + 1
            _walk(item, (*path, index), lines, problems, source, walked)
