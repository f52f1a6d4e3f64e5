"""Fleet files: the phones of a plan, one a row, with per-phone values.

A fleet file is CSV (with a header row) or JSON (a list of objects), named by ``fleet.file`` and
read relative to the plan file. It must have a ``phone_id`` column. Every other column is
available to the plan's property templates as a placeholder (``{msisdn}``); a column whose name
contains a ``.`` (as every CPH property name does) is also that property's value for the phone,
overriding the plan's common value. An empty cell (or JSON ``null``) means "not set for this
phone": the placeholder is missing and the common property applies.

CSV cells are strings (leading spaces after a comma are dropped). JSON numbers and booleans keep
their type where JSON writes them back as typed, so ``7`` can be formatted with ``{count:04d}``;
any other number (``1.10``, ``1e3``, ``-0``) is the text written, as every property value is
(:mod:`orchestrator.plan.verbatim`). Nested lists and objects are refused. Cells are taken as
written, never as templates.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from orchestrator.plan.errors import PlanError, Problems
from orchestrator.plan.model import (
    PHONE_ID_RULE,
    all_valid_phone_ids,
    valid_phone_id,
    valid_phone_id_lines,
)
from orchestrator.plan.properties import PropertyValue, show_value
from orchestrator.plan.verbatim import value_from_text

__all__ = [
    "NO_CELLS",
    "PHONE_ID_COLUMN",
    "RESERVED_COLUMNS",
    "FleetFile",
    "read_fleet_file",
    "read_fleet_text",
]

PHONE_ID_COLUMN = "phone_id"
RESERVED_COLUMNS = frozenset({"index"})
"""Column names that would shadow a built-in placeholder (``{phone_id}`` is the key column itself)."""

Row = Mapping[str, PropertyValue]
NO_CELLS: Row = MappingProxyType({})
"""The row of a phone without set cells: one read-only mapping that 100,000 phones can share."""


@dataclass(slots=True)
class FleetFile:
    """A fleet file as read: its columns, its phone IDs with their set (non-empty) values per
    column, and where each row is in the file (for messages)."""

    label: str
    kind: Literal["csv", "json"]
    columns: list[str] = field(default_factory=list)
    phone_ids: list[str] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    column_set: set[str] = field(default_factory=set)

    def where(self, position: int) -> str:
        """Where the row at ``position`` (0-based) is: ``fleet.csv:row 17 (line 18)``."""
        noun = "row" if self.kind == "csv" else "item"
        return f"{self.label}:{noun} {position + 1} (line {self.lines[position]})"

    def add(self, phone_id: str, row: Row, line: int) -> None:
        """Append one row."""
        self.phone_ids.append(phone_id)
        self.rows.append(row)
        self.lines.append(line)


def read_fleet_file(path: Path, label: str) -> FleetFile:
    """Read a ``.csv`` or ``.json`` fleet file; every problem found raises one :class:`PlanError`."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PlanError(f"{label}: cannot read the fleet file: {exc.strerror or exc}") from exc
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise PlanError(
            f"{label}:{line}: the fleet file is not UTF-8 text: byte {raw[exc.start]:#04x}"
            f" at offset {exc.start} ({exc.reason})"
        ) from exc
    kind: Literal["csv", "json"] = "json" if path.suffix.lower() == ".json" else "csv"
    return read_fleet_text(text, label, kind)


def read_fleet_text(text: str, label: str, kind: Literal["csv", "json"]) -> FleetFile:
    """Parse fleet text already read; see :func:`read_fleet_file`."""
    problems = Problems()
    table = FleetFile(label, kind)
    if kind == "csv":
        if not _read_plain_csv(text, table):
            _read_csv(text, table, problems)
    else:
        _read_json(text, table, problems)
    problems.raise_if_any()
    return table


def _check_header(header: list[str], label: str, problems: Problems) -> bool:
    where = f"{label}:1"
    before = problems.total
    if PHONE_ID_COLUMN not in header:
        shown = ", ".join(header) or "none"
        problems.add(where, "header", f"no {PHONE_ID_COLUMN} column (columns: {shown})")
    seen: set[str] = set()
    for name in header:
        if not name:
            problems.add(where, "header", "a column has no name")
        elif name in seen:
            problems.add(where, f"column {name}", "appears twice in the header")
        elif name in RESERVED_COLUMNS:
            problems.add(
                where, f"column {name}", f"the name is reserved for the {{{name}}} placeholder"
            )
        seen.add(name)
    return problems.total == before


def _check_phone_id(value: object, where: str, problems: Problems) -> str | None:
    if isinstance(value, str) and valid_phone_id(value):
        return value
    if value is None or value == "":
        problems.add(where, PHONE_ID_COLUMN, "missing")
    else:
        problems.add(
            where,
            PHONE_ID_COLUMN,
            f"{show_value(value)}: not a valid phone ID ({PHONE_ID_RULE})",
        )
    return None


_Plain = tuple[list[str], list[str], list[Row]]
"""A plain fleet file read: its header, its phone IDs, and their rows."""


def _read_plain_csv(text: str, table: FleetFile) -> bool:
    """Read a CSV fleet without a single problem in bulk; False (``table`` untouched) otherwise.

    Most fleet files are plain: every record one line, every row as wide as the header, every
    phone ID valid as written. For those, per-row bookkeeping (the line a row starts on, a blank
    row skipped, a short row padded, a place to name in a message) is wasted, and the rows are
    read at C speed. Anything else is left to :func:`_read_csv`, which reads the file again and
    says what is wrong where.
    """
    plain = _read_bare_ids(text) or _read_plain_records(text, table.label)
    if plain is None:
        return False
    header, table.phone_ids, table.rows = plain
    table.columns = [name for name in header if name != PHONE_ID_COLUMN]
    table.lines = list(range(2, len(table.phone_ids) + 2))
    return True


def _read_bare_ids(text: str) -> _Plain | None:
    """A ``phone_id`` header and one valid ID a line, nothing else: no CSV parsing needed.

    Without a comma, quote, space or carriage return in the file, each line is one record of one
    cell, exactly as the CSV reader would see it.
    """
    header, _, body = text.partition("\n")
    if header != PHONE_ID_COLUMN or not valid_phone_id_lines(body):
        return None
    phone_ids = body.split("\n")
    if not phone_ids[-1]:
        phone_ids.pop()  # the newline that ends the file
    return [PHONE_ID_COLUMN], phone_ids, [NO_CELLS] * len(phone_ids)


def _read_plain_records(text: str, label: str) -> _Plain | None:
    """A valid header, then records of one line each, as wide as the header, with valid IDs."""
    reader = csv.reader(io.StringIO(text, newline=""), skipinitialspace=True, strict=True)
    try:
        header = [name.strip() for name in next(reader, [])]
        records = list(reader)
    except csv.Error:
        return None
    width = len(header)
    if (
        reader.line_num != len(records) + 1
        or not _check_header(header, label, Problems())
        or any(len(cells) != width for cells in records)
    ):
        return None
    key = header.index(PHONE_ID_COLUMN)
    phone_ids = list(map(itemgetter(key), records))
    if not all_valid_phone_ids(phone_ids):
        return None
    if width == 1:
        return header, phone_ids, [NO_CELLS] * len(records)
    return header, phone_ids, [_cells_to_row(header, key, cells) for cells in records]


def _cells_to_row(header: list[str], key: int, cells: list[str]) -> Row:
    """The set cells of a row by column name, the phone ID apart."""
    return {header[i]: cell for i, cell in enumerate(cells) if cell and i != key}


def _read_csv(text: str, table: FleetFile, problems: Problems) -> None:
    reader = csv.reader(io.StringIO(text, newline=""), skipinitialspace=True, strict=True)
    try:
        header = [name.strip() for name in next(reader, [])]
        if not _check_header(header, table.label, problems):
            return
        table.columns = [name for name in header if name != PHONE_ID_COLUMN]
        key = header.index(PHONE_ID_COLUMN)
        _read_csv_rows(reader, header, key, table, problems)
    except csv.Error as exc:
        problems.add(f"{table.label}:{reader.line_num}", "", f"not valid CSV: {exc}")


def _read_csv_rows(
    reader: Any, header: list[str], key: int, table: FleetFile, problems: Problems
) -> None:
    width = len(header)
    last_line = reader.line_num
    number = 0
    for cells in reader:
        line, last_line = last_line + 1, reader.line_num
        if not cells or cells == [""]:
            continue
        number += 1
        where = f"{table.label}:row {number} (line {line})"
        if len(cells) > width:
            problems.add(where, "", f"{len(cells)} cells but the header has {width} columns")
            continue
        cells += [""] * (width - len(cells))  # a short row leaves its last cells empty
        phone_id = _check_phone_id(cells[key].strip(), where, problems)
        if phone_id is None:
            continue
        table.add(phone_id, _cells_to_row(header, key, cells), line)


def _read_json(text: str, table: FleetFile, problems: Problems) -> None:
    try:
        for number, (item, line) in enumerate(_json_items(text), start=1):
            _add_json_item(
                item, f"{table.label}:item {number} (line {line})", line, table, problems
            )
    except _JsonSyntaxError as exc:
        problems.add(f"{table.label}:{exc.line}", "", f"not a JSON list of objects: {exc}")
    except (ValueError, RecursionError) as exc:
        problems.add(table.label, "", f"unreadable JSON: {exc}")


def _add_json_item(item: Any, where: str, line: int, table: FleetFile, problems: Problems) -> None:
    if not isinstance(item, dict):
        problems.add(where, "", "each item must be an object with a phone_id")
        return
    phone_id = _check_phone_id(item.get(PHONE_ID_COLUMN), where, problems)
    row: dict[str, PropertyValue] = {}
    for name, value in item.items():
        if name == PHONE_ID_COLUMN or value is None or value == "":
            continue
        if name in RESERVED_COLUMNS:
            problems.add(where, name, f"the name is reserved for the {{{name}}} placeholder")
        elif not isinstance(value, str | int | float | bool):
            problems.add(where, name, "must be a string, number or boolean")
        else:
            row[name] = value
            if name not in table.column_set:
                table.column_set.add(name)
                table.columns.append(name)
    if phone_id is not None:
        table.add(phone_id, row, line)


class _JsonSyntaxError(ValueError):
    def __init__(self, message: str, line: int) -> None:
        super().__init__(message)
        self.line = line


def _json_items(text: str) -> Any:
    """Yield ``(item, line)`` for each element of a top-level JSON array, tracking lines cheaply."""
    decoder = json.JSONDecoder(
        parse_int=value_from_text, parse_float=value_from_text, parse_constant=value_from_text
    )
    position = _skip_space(text, 0)
    if not text.startswith("[", position):
        raise _JsonSyntaxError("the file must hold a JSON list", text.count("\n", 0, position) + 1)
    position = _skip_space(text, position + 1)
    line, counted = 1, 0
    if text.startswith("]", position):
        position = _skip_space(text, position + 1)
    else:
        while True:
            line += text.count("\n", counted, position)
            counted = position
            try:
                item, position = decoder.raw_decode(text, position)
            except json.JSONDecodeError as exc:
                raise _JsonSyntaxError(exc.msg, exc.lineno) from exc
            yield item, line
            position = _skip_space(text, position)
            if text.startswith(",", position):
                position = _skip_space(text, position + 1)
            elif text.startswith("]", position):
                position = _skip_space(text, position + 1)
                break
            else:
                raise _JsonSyntaxError("expected ',' or ']'", text.count("\n", 0, position) + 1)
    if position != len(text):
        raise _JsonSyntaxError("text after the list", text.count("\n", 0, position) + 1)


def _skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position] in " \t\r\n":
        position += 1
    return position
