"""Reading a CSV or JSONL file of texts and labels (`read_csv`, `read_jsonl`), checked whole before
any work: UTF-8 only (a spreadsheet's byte-order mark is dropped), every problem one UserError
naming the file, the line and what to do.

A row whose text or label is empty is refused by its row number or, with
``on_missing="drop"``, left out and counted (`TextRows.dropped`).
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sweeper.errors import UserError

# one CSV field at most (csv's own limit, 128 Ki characters, ended in a `_csv.Error` traceback);
# a field this long is nearly always an unclosed quote that swallowed the rows after it
FIELD_LIMIT = 128 * 1024
SHOWN = 5  # row numbers a message shows before "..."
_NOT_UTF8 = (
    (codecs.BOM_UTF32_LE, "UTF-32"),  # before UTF-16: its mark starts with UTF-16's
    (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"),
    (codecs.BOM_UTF16_BE, "UTF-16"),
)


@dataclass(frozen=True)
class TextRows:
    """The texts and labels of a file's complete rows, in file order, and how many were dropped."""

    texts: list[str]
    labels: list[Any]
    dropped: int = 0


def read_csv(path: Path, text_column: str, label_column: str, on_missing: str = "refuse") -> TextRows:
    """The file's rows under a header naming ``text_column`` and ``label_column``.

    Example:
        >>> read_csv(Path("reviews.csv"), "text", "label").texts[:1]
        ['a fine film']
    """
    header, records = _csv_records(read_utf8(path), path)
    if not header:
        raise UserError(f"[data] {path} is empty; it needs a header row and rows below it")
    columns = [
        _column_index(header, key, column, path) for key, column in _columns(text_column, label_column)
    ]
    rows = [(number, *(_cell(cells, i) for i in columns)) for number, cells in records]
    return _complete_rows(rows, path, (text_column, label_column), "row", on_missing)


def read_jsonl(path: Path, text_column: str, label_column: str, on_missing: str = "refuse") -> TextRows:
    """The file's objects, one per line, with keys ``text_column`` and ``label_column``."""
    objects = list(_json_objects(read_utf8(path), path))
    found = list(dict.fromkeys(key for _, obj in objects for key in obj))
    for key, column in _columns(text_column, label_column):
        if objects and column not in found:
            raise UserError(f"[data] {key} is {column!r}, but {path} has keys {found}")
    rows = [(n, _present(obj.get(text_column)), _present(obj.get(label_column))) for n, obj in objects]
    return _complete_rows(rows, path, (text_column, label_column), "line", on_missing)


def read_utf8(path: Path) -> str:
    """The file's text; UTF-16/32, NUL bytes and bytes that are not UTF-8 are refused by line."""
    data = path.read_bytes()
    for mark, name in _NOT_UTF8:
        if data.startswith(mark):
            raise UserError(
                f"[data] {path} is {name} (it starts with a {name} byte-order mark), but sweeper reads "
                f"UTF-8; convert it: iconv -f {name.lower()} -t utf-8 {path.name} > {_utf8_name(path)}"
            )
    nul = data.find(b"\0")
    if nul >= 0:
        raise UserError(
            f"[data] {path} line {_line_of(data, nul)} holds a NUL byte, so it is not UTF-8 text "
            "(UTF-16 without a byte-order mark, or not a text file?); save it as UTF-8 text"
        )
    data = data.removeprefix(codecs.BOM_UTF8)  # as spreadsheets write UTF-8
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(
            f"[data] {path} line {_line_of(data, exc.start)}: byte 0x{data[exc.start]:02x} is not "
            "UTF-8, and sweeper expected UTF-8 (this file looks latin-1 or Windows cp1252, as older "
            f"spreadsheets save it); convert it: iconv -f latin1 -t utf-8 {path.name} > {_utf8_name(path)} "
            "(-f cp1252 for a Windows file)"
        ) from None


def _csv_records(text: str, path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header (the first non-blank record) and the non-blank records after it, each with its
    row number as a spreadsheet shows it (blank lines count; a quoted line break does not)."""
    # csv's own limit only has to let the longest field through: ours is checked below, by line
    previous = csv.field_size_limit(max(csv.field_size_limit(), len(text) + 1))
    try:
        reader = csv.reader(io.StringIO(text, newline=""))
        header: list[str] = []
        records = []
        line = 1  # where the next record starts
        for number, cells in enumerate(_records(reader, path), 1):
            _check_fields(cells, header, path, line)
            line = reader.line_num + 1
            if not cells:  # a blank line: no cells, but a row as a spreadsheet counts them
                continue
            if header:
                records.append((number, cells))
            else:
                header = cells
        return header, records
    finally:
        csv.field_size_limit(previous)


def _records(reader, path: Path) -> Iterator[list[str]]:
    try:
        yield from reader
    except csv.Error as exc:
        raise UserError(f"[data] {path} line {reader.line_num} is not CSV: {exc}") from None


def _check_fields(cells: list[str], header: list[str], path: Path, line: int) -> None:
    for cell in cells:
        # a character is at most 4 bytes: only a long cell is worth encoding
        if len(cell) > FIELD_LIMIT // 4 and len(cell.encode()) > FIELD_LIMIT:
            raise UserError(
                f"[data] {path} line {line}: a field of {len(cell.encode()) // 1024} KiB, over the "
                f'limit of {FIELD_LIMIT // 1024} KiB; most often a quote (") left open, so that the '
                "rows after it read as one field: close it, or shorten the text"
            )
    if header and len(cells) > len(header) and any(c.strip() for c in cells[len(header) :]):
        raise UserError(
            f"[data] {path} line {line} has {len(cells)} fields, but the header has {len(header)} "
            f"({', '.join(header)}); a text with a comma must be quoted, "
            '"like, this" (spreadsheets save it so)'
        )


def _json_objects(text: str, path: Path) -> Iterator[tuple[int, dict]]:
    # lines end at \n only: a JSON string may hold U+2028 and others that str.splitlines splits at
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except (ValueError, RecursionError) as exc:  # ValueError includes JSONDecodeError
            reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
            raise UserError(f"[data] {path} line {number} is not JSON: {reason}") from None
        if not isinstance(value, dict):
            raise UserError(
                f"[data] {path} line {number} is a JSON {type(value).__name__}, but each line must "
                'be one object, such as {"text": "...", "label": "..."}'
            )
        yield number, value


def _complete_rows(
    rows: list[tuple[int, Any, Any]], path: Path, columns: tuple[str, str], unit: str, on_missing: str
) -> TextRows:
    """Rows as (number, text, label), None where missing: refused by number, or dropped."""
    if not rows:
        raise UserError(f"[data] {path} holds no rows")
    missing = {column: [r[0] for r in rows if r[i + 1] is None] for i, column in enumerate(columns)}
    complete = [r for r in rows if r[1] is not None and r[2] is not None]
    dropped = len(rows) - len(complete)
    if dropped and on_missing != "drop":
        raise UserError(_describe_missing(path, missing, unit))
    if not complete:
        raise UserError(f"[data] {path}: every {unit} has an empty text or label; none is left to use")
    return TextRows([str(r[1]) for r in complete], [r[2] for r in complete], dropped)


def _describe_missing(path: Path, missing: dict[str, list[int]], unit: str) -> str:
    parts = []
    for column, numbers in missing.items():
        if numbers:
            shown = ", ".join(str(n) for n in numbers[:SHOWN]) + (", ..." if len(numbers) > SHOWN else "")
            plural = "s" if len(numbers) > 1 else ""
            parts.append(
                f"column {column!r} is empty in {len(numbers)} {unit}{plural} ({unit}{plural} {shown})"
            )
    header = " (numbered as a spreadsheet shows them, the header is row 1)" if unit == "row" else ""
    return (
        f"[data] {path}: {'; '.join(parts)}{header}; fill them in, or set "
        f'[data] on_missing = "drop" in the spec to leave those {unit}s out'
    )


def _columns(text_column: str, label_column: str) -> tuple[tuple[str, str], ...]:
    return (("text_column", text_column), ("label_column", label_column))


def _column_index(header: list[str], key: str, column: str, path: Path) -> int:
    if column not in header:
        raise UserError(f"[data] {key} is {column!r}, but {path} has columns {header}")
    return header.index(column)


def _cell(cells: list[str], index: int) -> str | None:
    return _present(cells[index]) if index < len(cells) else None


def _present(value: Any) -> Any:
    """The value, or None where it is missing: absent, null, or blank text."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return value


def _line_of(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def _utf8_name(path: Path) -> str:
    return f"{path.stem}-utf8{path.suffix}"
