"""The CSV and JSONL readers: a real file each, and every bad one is one UserError naming the file,
the line and what to do; a file generated with any encoding, quoting and empty cells either loads
what was written or is refused so, never another exception."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from sweeper.errors import UserError
from sweeper.readers import FIELD_LIMIT, read_csv, read_jsonl


def _write(tmp_path: Path, content: str | bytes, name: str = "data.csv") -> Path:
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8", newline="")
    else:
        path.write_bytes(content)
    return path


def _refusal(read, path: Path, on_missing: str = "refuse") -> str:
    with pytest.raises(UserError) as caught:
        read(path, "text", "label", on_missing)
    return str(caught.value)


def test_a_utf8_byte_order_mark_is_dropped_and_the_first_column_keeps_its_name(tmp_path):
    path = _write(tmp_path, "text,label\r\ngood,pos\r\nbad,neg\r\n".encode("utf-8-sig"))
    rows = read_csv(path, "text", "label")
    assert rows.texts == ["good", "bad"] and rows.labels == ["pos", "neg"]


def test_latin1_bytes_are_refused_with_the_line_the_encoding_expected_and_how_to_convert(tmp_path):
    path = _write(tmp_path, "text,label\ngood,pos\ncafé au lait,neu\n".encode("latin-1"))
    message = _refusal(read_csv, path)
    assert str(path) in message and "line 3" in message and "byte 0xe9" in message
    assert "expected UTF-8" in message and "iconv -f latin1 -t utf-8 data.csv > data-utf8.csv" in message


def test_a_utf16_file_is_named_as_utf16(tmp_path):
    path = _write(tmp_path, "text,label\ngood,pos\n".encode("utf-16"))
    message = _refusal(read_csv, path)
    assert "is UTF-16" in message and "iconv -f utf-16 -t utf-8" in message


def test_a_nul_byte_is_named_with_its_line(tmp_path):
    path = _write(tmp_path, b"text,label\ngood,pos\nba\x00d,neg\n")
    message = _refusal(read_csv, path)
    assert "line 3 holds a NUL byte" in message


def test_a_field_over_the_limit_is_refused_with_its_line_not_a_csv_traceback(tmp_path):
    long = "x" * (FIELD_LIMIT + 10)
    path = _write(tmp_path, f'text,label\ngood,pos\n"{long}",neg\nbad,neg\n')
    message = _refusal(read_csv, path)
    assert str(path) in message and "line 3" in message and "limit of 128 KiB" in message


def test_an_unclosed_quote_that_swallows_the_file_is_refused_at_the_line_it_opens(tmp_path):
    rows = "".join(f"word {i},pos\n" for i in range(5000))  # ~60 KiB a row block; twice over the limit
    path = _write(tmp_path, f'text,label\n"oops,neg\n{rows}{rows}{rows}')
    assert "line 2: a field of" in _refusal(read_csv, path)


def test_a_field_just_under_the_limit_loads(tmp_path):
    long = "é" * (FIELD_LIMIT // 2)  # 2 bytes a character: exactly the limit in bytes
    path = _write(tmp_path, f"text,label\n{long},pos\n")
    assert read_csv(path, "text", "label").texts == [long]


def test_an_unquoted_comma_is_refused_with_its_line_and_how_to_quote(tmp_path):
    path = _write(tmp_path, "text,label\ngood,pos\nbad, really bad,neg\n")
    message = _refusal(read_csv, path)
    assert "line 3 has 3 fields, but the header has 2 (text, label)" in message
    assert '"like, this"' in message


def test_trailing_empty_fields_are_not_ragged(tmp_path):
    path = _write(tmp_path, "text,label\ngood,pos,\nbad,neg,,\n")
    assert read_csv(path, "text", "label").labels == ["pos", "neg"]


def test_a_missing_column_is_named_with_the_columns_found(tmp_path):
    path = _write(tmp_path, "sentence,label\ngood,pos\n")
    message = _refusal(read_csv, path)
    assert "[data] text_column is 'text'" in message and "['sentence', 'label']" in message


def test_an_empty_file_and_a_header_alone_are_refused(tmp_path):
    assert "is empty" in _refusal(read_csv, _write(tmp_path, ""))
    assert "holds no rows" in _refusal(read_csv, _write(tmp_path, "text,label\n"))


def test_empty_cells_are_refused_with_column_spreadsheet_rows_count_and_the_override(tmp_path):
    # row 1 is the header; the quoted line break in row 3 does not make a row of its own
    path = _write(tmp_path, 'text,label\ngood,pos\n"two\nlines",\n,neg\n  ,pos\nfine,neg\n\nlast,\n')
    message = _refusal(read_csv, path)
    assert str(path) in message
    assert "column 'text' is empty in 2 rows (rows 4, 5)" in message
    assert "column 'label' is empty in 2 rows (rows 3, 8)" in message
    assert 'on_missing = "drop"' in message


def test_many_empty_cells_show_the_first_row_numbers_and_the_count(tmp_path):
    path = _write(tmp_path, "text,label\n" + "".join(f"w{i},\n" for i in range(40)))
    assert "empty in 40 rows (rows 2, 3, 4, 5, 6, ...)" in _refusal(read_csv, path)


def test_on_missing_drop_leaves_out_the_rows_and_counts_them(tmp_path):
    path = _write(tmp_path, "text,label\ngood,pos\n,neg\nbad,\nfine,neg\n")
    rows = read_csv(path, "text", "label", "drop")
    assert (rows.texts, rows.labels, rows.dropped) == (["good", "fine"], ["pos", "neg"], 2)


def test_dropping_every_row_is_refused(tmp_path):
    path = _write(tmp_path, "text,label\ngood,\n,neg\n")
    assert "none is left" in _refusal(read_csv, path, "drop")


def test_a_jsonl_line_that_is_not_json_or_not_an_object_is_named(tmp_path):
    path = _write(tmp_path, '{"text": "a", "label": 1}\n\n{"text": oops}\n', "rows.jsonl")
    assert "rows.jsonl line 3 is not JSON" in _refusal(read_jsonl, path)
    path = _write(tmp_path, '{"text": "a", "label": 1}\n["b", 2]\n', "rows.jsonl")
    assert "line 2 is a JSON list, but each line must be one object" in _refusal(read_jsonl, path)
    path = _write(tmp_path, "[" * 100_000 + "\n", "rows.jsonl")
    assert "line 1 is not JSON: nested too deeply" in _refusal(read_jsonl, path)


def test_jsonl_empty_null_or_absent_values_are_refused_by_line_or_dropped(tmp_path):
    lines = [
        '{"text": "a", "label": 1}',
        '{"text": "", "label": 2}',
        '{"text": "c", "label": null}',
        '{"text": "d"}',
    ]
    path = _write(tmp_path, "\n".join(lines) + "\n", "rows.jsonl")
    message = _refusal(read_jsonl, path)
    assert "column 'text' is empty in 1 line (line 2)" in message
    assert "column 'label' is empty in 2 lines (lines 3, 4)" in message
    rows = read_jsonl(path, "text", "label", "drop")
    assert (rows.texts, rows.labels, rows.dropped) == (["a"], [1], 3)


def test_a_jsonl_key_no_line_has_is_named_with_the_keys_found(tmp_path):
    path = _write(tmp_path, '{"sentence": "a", "label": 1}\n', "rows.jsonl")
    assert "[data] text_column is 'text', but" in (message := _refusal(read_jsonl, path))
    assert "['sentence', 'label']" in message


def test_a_jsonl_text_holding_a_unicode_line_separator_stays_one_line(tmp_path):
    path = _write(
        tmp_path, json.dumps({"text": "a\u2028b", "label": 1}, ensure_ascii=False) + "\n", "rows.jsonl"
    )
    assert read_jsonl(path, "text", "label").texts == ["a\u2028b"]


# --- generated files: each either loads what was written, or is one UserError ---

_CELL = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12) | st.sampled_from(
    ["", " ", "a,b", 'say "hi"', "two\nlines", "cr\rlf\r\n", "é", "—", "\x00"]
)
_ENCODINGS = st.sampled_from(["utf-8", "utf-8-sig", "latin-1", "utf-16"])


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _expected(rows: list[tuple], on_missing: str) -> tuple[list, list] | None:
    """What a loader must return for these rows, or None where it must refuse them."""
    complete = [(t, label) for t, label in rows if not _is_missing(t) and not _is_missing(label)]
    if not rows or not complete or (len(complete) < len(rows) and on_missing == "refuse"):
        return None
    return [str(t) for t, _ in complete], [label for _, label in complete]


def _encoded(text: str, encoding: str) -> bytes | None:
    """The file's bytes, or None where the encoding cannot hold the text."""
    try:
        return text.encode(encoding)
    except UnicodeEncodeError:
        return None


def _check(read, path: Path, content: str, encoding: str, rows: list[tuple], on_missing: str) -> None:
    data = path.read_bytes()
    # a latin-1 file whose bytes happen to be UTF-8 reads as other text: no promise for it
    reads_as_written = (
        encoding != "utf-16"
        and "\x00" not in content
        and data.decode("utf-8", "replace") in (content, "\ufeff" + content)
    )
    assume(reads_as_written or encoding == "utf-16" or not _valid_utf8(data))
    expected = _expected(rows, on_missing) if reads_as_written else None
    try:
        loaded = read(path, "text", "label", on_missing)
    except UserError:
        assert expected is None, "refused a file that should load"
        return
    assert expected is not None, "loaded a file that should be refused"
    assert (loaded.texts, loaded.labels) == expected


def _valid_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(st.tuples(_CELL, _CELL), max_size=8),
    extra=st.booleans(),
    quoting=st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL, csv.QUOTE_NONNUMERIC]),
    encoding=_ENCODINGS,
    on_missing=st.sampled_from(["refuse", "drop"]),
    header=st.booleans(),
)
def test_a_generated_csv_loads_what_was_written_or_is_one_user_error(
    tmp_path, rows, extra, quoting, encoding, on_missing, header
):
    out = io.StringIO(newline="")
    writer = csv.writer(out, quoting=quoting)
    if header:  # without one, the file is empty
        writer.writerow(["label", "text", "note"] if extra else ["text", "label"])
        writer.writerows([(label, text, "n, b") if extra else (text, label) for text, label in rows])
    content = out.getvalue()
    data = _encoded(content, encoding)
    assume(data is not None)
    path = _write(tmp_path, data)
    _check(read_csv, path, content, encoding, rows if header else [], on_missing)


_JSON_VALUE = _CELL | st.none() | st.integers(-5, 5)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(st.tuples(_CELL, _JSON_VALUE), max_size=8),
    ascii_only=st.booleans(),
    newline=st.sampled_from(["\n", "\r\n"]),
    blank_lines=st.booleans(),
    encoding=_ENCODINGS,
    on_missing=st.sampled_from(["refuse", "drop"]),
)
def test_a_generated_jsonl_loads_what_was_written_or_is_one_user_error(
    tmp_path, rows, ascii_only, newline, blank_lines, encoding, on_missing
):
    lines = [json.dumps({"text": t, "label": label}, ensure_ascii=ascii_only) for t, label in rows]
    content = (newline * (2 if blank_lines else 1)).join(lines) + (newline if lines else "")
    data = _encoded(content, encoding)
    assume(data is not None)
    path = _write(tmp_path, data, "rows.jsonl")
    _check(read_jsonl, path, content, encoding, rows, on_missing)
