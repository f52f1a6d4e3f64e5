"""Parsing plan text (YAML, JSON, TOML) and finding the line of a field in it.

Validation errors name a field by its path (pydantic's ``loc``: ``("policy", "waves", 1)``); a
*locator* turns that path into a line of the source text. YAML and JSON texts are composed into a
PyYAML node tree, whose nodes carry their position (JSON is YAML for this purpose, but its values
are loaded with :mod:`json` so that types are exact). ``tomllib`` keeps no positions, so for TOML
the line is found by searching the text for the keys of the path; when nothing is found there is
no line, and messages name the file alone.

Property values are taken as written (:mod:`orchestrator.plan.verbatim`): a YAML scalar under
``properties`` is rebuilt from its source text before it is constructed, JSON and TOML hand the
text of their numbers to a hook, and a TOML integer, whose text ``tomllib`` drops, is looked up in
the source and refused unless it was written in plain decimal.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Sequence
from typing import Any, Literal, Protocol

import yaml

from orchestrator.plan.errors import PlanError, PlanProblem
from orchestrator.plan.verbatim import NumberText, value_from_text

__all__ = [
    "Loc",
    "Locator",
    "NodeLocator",
    "NullLocator",
    "PlanFormat",
    "TomlLocator",
    "decode_json_plan",
    "format_loc",
    "parse_plan_text",
]

Loc = Sequence[str | int]
PlanFormat = Literal["yaml", "json", "toml"]

_YamlLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_TOML_LINE = re.compile(r"at line (\d+)")


def format_loc(loc: Loc) -> str:
    """``("policy", "waves", 1)`` as ``policy.waves[1]``."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


class Locator(Protocol):
    """Finds the 1-based line of a field path in the plan's text, if it can."""

    def line(self, loc: Loc) -> int | None:
        """The line of the deepest part of ``loc`` that exists in the text, or None."""


class NullLocator:
    """For plans given as data: no text, no lines."""

    def line(self, loc: Loc) -> int | None:
        """Always None."""
        return None


class NodeLocator:
    """Lines from a PyYAML node tree (YAML, and JSON parsed as YAML)."""

    def __init__(self, root: yaml.Node | None) -> None:
        self._root = root

    def line(self, loc: Loc) -> int | None:
        """The line of the key (in a mapping) or item (in a sequence) that ``loc`` reaches."""
        node = self._root
        if node is None:
            return None
        line = node.start_mark.line + 1
        for part in loc:
            found = _child(node, part)
            if found is None:
                break
            line, node = found
        return line


def _child(node: yaml.Node, part: str | int) -> tuple[int, yaml.Node] | None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                return key.start_mark.line + 1, value
    elif (
        isinstance(node, yaml.SequenceNode)
        and isinstance(part, int)
        and 0 <= part < len(node.value)
    ):
        item = node.value[part]
        return item.start_mark.line + 1, item
    return None


class TomlLocator:
    """Lines in TOML text found by searching for the keys of the path (tomllib keeps no positions)."""

    def __init__(self, text: str) -> None:
        self._lines = text.splitlines()

    def line(self, loc: Loc) -> int | None:
        """Search for each key in turn below the line of the previous one; None if the first is not found."""
        start = 0
        found: int | None = None
        for part in loc:
            if isinstance(part, int):
                continue
            index = self._find(str(part), start)
            if index is None:
                break
            found, start = index + 1, index
        return found

    def value_text(self, line: int, key: str) -> str | None:
        """The text of the value after ``"key" =`` on ``line`` (1-based), if it is there."""
        if not 1 <= line <= len(self._lines):
            return None
        escaped = re.escape(key)
        pattern = rf"""(?:"{escaped}"|'{escaped}')\s*=\s*([^\s,}}#\]]+)"""
        match = re.search(pattern, self._lines[line - 1])
        return match.group(1) if match else None

    def _find(self, key: str, start: int) -> int | None:
        escaped = re.escape(key)
        pattern = re.compile(
            rf"""^\s*(\[+\s*)?(?:[^=#]*\.)?\s*(?:{escaped}|"{escaped}"|'{escaped}')\s*(=|\]|\.)"""
        )
        for index in range(start, len(self._lines)):
            if pattern.match(self._lines[index]):
                return index
        return None


def parse_plan_text(text: str, fmt: PlanFormat, source: str) -> tuple[Any, Locator]:
    """Parse plan text into plain data and a locator; syntax errors raise :class:`PlanError`."""
    try:
        if fmt == "yaml":
            return _parse_yaml(text, source)
        if fmt == "json":
            return _parse_json(text, source)
        return _parse_toml(text, source)
    except yaml.MarkedYAMLError as exc:
        raise PlanError([_yaml_problem(exc, source)]) from exc
    except yaml.YAMLError as exc:
        raise PlanError([PlanProblem(source, "", f"not valid YAML: {exc}")]) from exc
    except RecursionError as exc:
        raise PlanError([PlanProblem(source, "", "nested too deeply to be a plan")]) from exc
    except (ValueError, OverflowError) as exc:
        # Values YAML accepts but Python cannot build: a 30th of February, a 5000-digit integer.
        raise PlanError([PlanProblem(source, "", f"unreadable value: {exc}")]) from exc


def _yaml_problem(exc: yaml.MarkedYAMLError, source: str) -> PlanProblem:
    mark = exc.problem_mark or exc.context_mark
    where = f"{source}:{mark.line + 1}" if mark is not None else source
    column = f" (column {mark.column + 1})" if mark is not None else ""
    what = " ".join(part for part in (exc.context, exc.problem) if part)
    return PlanProblem(where, "", f"not valid YAML{column}: {what or exc}")


def _parse_yaml(text: str, source: str) -> tuple[Any, Locator]:
    loader = _YamlLoader(text)
    try:
        node = loader.get_single_node()
        _refuse_repeated_keys(node, source)  # before the constructor merges ``<<`` keys in
        if node is not None:
            _keep_property_texts(node)
        data = loader.construct_document(node) if node is not None else None
    finally:
        loader.dispose()
    return data, NodeLocator(node)


_STR_TAG = "tag:yaml.org,2002:str"
_NULL_TAG = "tag:yaml.org,2002:null"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_TAG_OF_VALUE = {
    bool: "tag:yaml.org,2002:bool",
    int: "tag:yaml.org,2002:int",
    float: "tag:yaml.org,2002:float",
    str: _STR_TAG,
}


def _keep_property_texts(root: yaml.Node) -> None:
    """Retag the scalars under the top-level ``properties`` so each is built from its source text.

    A scalar's node holds the characters written (``012``, ``no``, ``1.10``); its tag is what YAML
    1.1 resolved them to (int 10, bool false, float 1.1). Each value is given the tag of
    :func:`value_from_text` instead, so the constructor builds exactly that. Strings and nulls keep
    theirs: a null is refused by the model, asking to quote it. Aliased nodes are copied, not
    changed, so the same anchor elsewhere in the plan keeps YAML's reading.
    """
    if not isinstance(root, yaml.MappingNode):
        return
    for position, (key, value) in enumerate(root.value):
        if (
            isinstance(key, yaml.ScalarNode)
            and key.value == "properties"
            and isinstance(value, yaml.MappingNode)
        ):
            root.value[position] = (key, _verbatim_mapping(value, set()))


def _verbatim_mapping(node: yaml.MappingNode, seen: set[int]) -> yaml.MappingNode:
    if id(node) in seen:  # a merge that refers to itself: the constructor reports it
        return node
    seen.add(id(node))
    pairs = [
        (key, _verbatim_merged(value, seen) if key.tag == _MERGE_TAG else _verbatim_scalar(value))
        for key, value in node.value
    ]
    return yaml.MappingNode(node.tag, pairs, node.start_mark, node.end_mark, node.flow_style)


def _verbatim_merged(node: yaml.Node, seen: set[int]) -> yaml.Node:
    """The mapping (or list of mappings) a ``<<`` merge key brings in, retagged alike."""
    if isinstance(node, yaml.MappingNode):
        return _verbatim_mapping(node, seen)
    if isinstance(node, yaml.SequenceNode):
        items = [_verbatim_merged(item, seen) for item in node.value]
        return yaml.SequenceNode(node.tag, items, node.start_mark, node.end_mark, node.flow_style)
    return node


def _verbatim_scalar(node: yaml.Node) -> yaml.Node:
    if not isinstance(node, yaml.ScalarNode) or node.tag in (_STR_TAG, _NULL_TAG):
        return node
    tag = _TAG_OF_VALUE[type(value_from_text(node.value))]
    return yaml.ScalarNode(tag, node.value, node.start_mark, node.end_mark, node.style)


def _refuse_repeated_keys(root: yaml.Node | None, source: str) -> None:
    """YAML quietly keeps the last of two equal keys; in a plan that is always a mistake."""
    problems: list[PlanProblem] = []
    stack = [root] if root is not None else []
    seen_nodes: set[int] = set()
    while stack:
        node = stack.pop()
        if id(node) in seen_nodes or isinstance(node, yaml.ScalarNode):
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
            continue
        first_line: dict[str, int] = {}
        for key, value in node.value:
            stack.append(value)
            if not isinstance(key, yaml.ScalarNode):
                continue
            line = key.start_mark.line + 1
            if key.value in first_line:
                message = f"given twice (first at line {first_line[key.value]})"
                problems.append(PlanProblem(f"{source}:{line}", key.value, message))
            first_line.setdefault(key.value, line)
    if problems:
        raise PlanError(problems)


class _LazyJsonLocator:
    """Composes the JSON text as YAML only when a line is asked for (errors are rare, texts big)."""

    def __init__(self, text: str) -> None:
        self._text = text
        self._locator: Locator | None = None

    def line(self, loc: Loc) -> int | None:
        """The line of ``loc``, or None if PyYAML cannot read this JSON as YAML."""
        if self._locator is None:
            try:
                self._locator = NodeLocator(yaml.compose(self._text, Loader=_YamlLoader))
            except (yaml.YAMLError, RecursionError, ValueError):
                self._locator = NullLocator()
        return self._locator.line(loc)


def decode_json_plan(text: str) -> Any:
    """A JSON plan as data, its property values taken as written (see the module doc).

    For callers that hold a plan as JSON text, such as a request body: decode it with this rather
    than :func:`json.loads`, which reads ``1.10`` as 1.1, and pass the data to
    :func:`orchestrator.plan.load_plan_data`. Raises :class:`json.JSONDecodeError`.
    """
    raw = json.loads(text, parse_int=NumberText, parse_float=NumberText, parse_constant=NumberText)
    return _settle_numbers(raw)


def _settle_numbers(data: Any) -> Any:
    """Numbers' texts as property values under ``properties``, as plain numbers everywhere else."""
    if not isinstance(data, dict):
        return _as_numbers(data)
    settled = {key: _as_numbers(value) for key, value in data.items()}
    properties = data.get("properties")
    if isinstance(properties, dict):
        settled["properties"] = {
            name: value_from_text(value) if isinstance(value, NumberText) else _as_numbers(value)
            for name, value in properties.items()
        }
    return settled


def _as_numbers(data: Any) -> Any:
    if isinstance(data, NumberText):
        return data.as_number()
    if isinstance(data, dict):
        return {key: _as_numbers(value) for key, value in data.items()}
    if isinstance(data, list):
        return [_as_numbers(item) for item in data]
    return data


def _parse_json(text: str, source: str) -> tuple[Any, Locator]:
    try:
        data = decode_json_plan(text)
    except json.JSONDecodeError as exc:
        where = f"{source}:{exc.lineno}"
        raise PlanError(
            [PlanProblem(where, "", f"not valid JSON (column {exc.colno}): {exc.msg}")]
        ) from exc
    return data, _LazyJsonLocator(text)


def _parse_toml(text: str, source: str) -> tuple[Any, Locator]:
    try:
        data = _settle_numbers(tomllib.loads(text, parse_float=NumberText))
    except tomllib.TOMLDecodeError as exc:
        match = _TOML_LINE.search(str(exc))
        where = f"{source}:{match.group(1)}" if match else source
        raise PlanError([PlanProblem(where, "", f"not valid TOML: {exc}")]) from exc
    locator = TomlLocator(text)
    properties = data.get("properties")
    if isinstance(properties, dict):
        _refuse_unkept_integers(properties, locator, source)
    return data, locator


def _refuse_unkept_integers(properties: dict[str, Any], locator: TomlLocator, source: str) -> None:
    """``tomllib`` reads ``0x1F``, ``1_000`` and ``+1`` as ints and drops the text: refuse those.

    The text is looked for on the property's line; an integer written in plain decimal is kept
    (its JSON is the same text), anything else, or a text not found, asks for quotes.
    """
    problems: list[PlanProblem] = []
    for name, value in properties.items():
        if type(value) is not int:
            continue
        line = locator.line(("properties", name))
        written = locator.value_text(line, name) if line is not None else None
        if written == str(value):
            continue
        where = f"{source}:{line}" if line is not None else source
        shown = f"{written} is read as {value}" if written else f"the integer {value} is read"
        message = f"{shown} and TOML keeps no text of integers; quote it to send it as written"
        problems.append(PlanProblem(where, f"properties.{name}", message))
    if problems:
        raise PlanError(problems)
