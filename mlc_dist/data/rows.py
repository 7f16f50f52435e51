"""Row-level reading of delimited (CSV/TSV) and JSON-lines files: every row comes out once, with
the line it starts on (`_line`) and what was wrong with it (`_read_error`, "" when nothing).

pyarrow parses; this module adds what it lacks for row-level quarantine: a byte pre-pass that
marks bytes that are not UTF-8 (pyarrow fails the whole file on them, even in its invalid-row
handler), and physical line numbers (pyarrow counts rows, and a quoted value can span lines).
Owns parsing only: whether a bad row fails the job or is quarantined is the caller's.
"""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson

LINE, READ_ERROR = "_line", "_read_error"
INVALID_UTF8, WRONG_FIELD_COUNT, NOT_A_JSON_OBJECT = "invalid_utf8", "wrong_field_count", \
    "not_a_json_object"
READ_ERRORS = (INVALID_UTF8, WRONG_FIELD_COUNT, NOT_A_JSON_OBJECT)


class UnreadableFile(ValueError):
    """A file that cannot be read at all (not one bad row): the message says why."""


def parse_delimited(raw: bytes, *, delimiter: str, quoting: bool, header: bool,
                    column_names: list[str] | None, string_columns: list[str]) -> pa.Table:
    """CSV/TSV bytes -> the file's columns + `_line` + `_read_error`, rows in file order.

    A row with the wrong number of fields (a stray tab in unquoted TSV) or with bytes that are
    not UTF-8 comes out with null values and its reason; the good rows of the file are kept.
    Strings that read "NA", "null" or "" stay text. Blank lines are not rows.
    """
    if not raw.strip():  # a 0-byte (or blank) file is an empty input, not a failure
        return _empty(column_names or string_columns)
    raw, marker = _mark_invalid_utf8(raw)
    invalid_rows: list[tuple[int, str]] = []

    def on_invalid_row(row) -> str:
        invalid_rows.append((row.number, row.text))  # number: rows so far, the header included
        return "skip"

    try:
        table = _read_csv(raw, on_invalid_row, delimiter=delimiter, quoting=quoting,
                          header=header, column_names=column_names, string_columns=string_columns)
    except pa.ArrowInvalid as exc:  # e.g. a quote never closed: no row boundary to go by
        raise UnreadableFile(f"unreadable {'TSV' if delimiter == chr(9) else 'CSV'}: {exc}") \
            from None
    names_span = 1 + sum(n.count("\n") for n in table.column_names) if header else 0
    first_row = 2 if header else 1
    return _assemble(table, raw, marker, invalid_rows, names_span + 1, first_row)


def _read_csv(raw: bytes, on_invalid_row, *, delimiter: str, quoting: bool, header: bool,
              column_names: list[str] | None, string_columns: list[str]) -> pa.Table:
    return pacsv.read_csv(
        io.BytesIO(raw),
        # One thread: pyarrow numbers invalid rows only then.
        read_options=pacsv.ReadOptions(use_threads=False, column_names=column_names if not header
                                       else None,
                                       autogenerate_column_names=not header and not column_names),
        parse_options=pacsv.ParseOptions(delimiter=delimiter, quote_char='"' if quoting else False,
                                         newlines_in_values=quoting, ignore_empty_lines=False,
                                         invalid_row_handler=on_invalid_row),
        # Texts and ids stay strings even when a file holds only digits or "NA".
        convert_options=pacsv.ConvertOptions(
            column_types={c: pa.string() for c in string_columns}, strings_can_be_null=False))


def _assemble(table: pa.Table, raw: bytes, marker: str | None,
              invalid_rows: list[tuple[int, str]], first_line: int, first_row: int) -> pa.Table:
    """Good rows and invalid rows back in file order, each with its physical line."""
    strings = [c for c in table.column_names if pa.types.is_string(table.schema.field(c).type)]
    total = table.num_rows + len(invalid_rows)
    spans = np.ones(total, np.int64)  # physical lines per row: 1 + newlines inside its values
    bad_at = np.array([n - first_row for n, _ in invalid_rows], np.int64)
    good_at = np.setdiff1d(np.arange(total), bad_at, assume_unique=True)
    for c in strings:
        spans[good_at] += pc.count_substring(table.column(c).fill_null(""), "\n").to_numpy(
            zero_copy_only=False)
    spans[bad_at] += np.array([text.count("\n") for _, text in invalid_rows], np.int64)
    lines = first_line + np.cumsum(spans) - spans
    error = np.full(table.num_rows, "", dtype=object)
    if marker is not None:
        for c in strings:
            hit = pc.fill_null(pc.match_substring(table.column(c), marker), False)
            error[hit.to_numpy(zero_copy_only=False)] = INVALID_UTF8
    keep = ~_blank(table, strings, lines[good_at], raw)
    good = table.append_column(LINE, pa.array(lines[good_at], pa.int64())).append_column(
        READ_ERROR, pa.array(error, pa.string())).filter(pa.array(keep))
    good = _null_where_invalid(good, strings)
    if not invalid_rows:
        return good
    bad = _bad_rows(table.schema, lines[bad_at], [
        INVALID_UTF8 if marker is not None and marker in text else WRONG_FIELD_COUNT
        for _, text in invalid_rows])
    both = pa.concat_tables([good, bad])
    return both.take(pc.sort_indices(both.column(LINE)))


def _blank(table: pa.Table, strings: list[str], lines: np.ndarray, raw: bytes) -> np.ndarray:
    """Rows that are blank lines (pyarrow, told not to skip them so rows map to lines, reads
    them as rows of empty values): every value empty and the row's line empty in the file."""
    if not table.num_rows:
        return np.zeros(0, bool)
    empty = np.ones(table.num_rows, bool)
    for c in table.column_names:
        col = table.column(c)
        is_empty = pc.equal(col, "") if c in strings else pc.is_null(col)
        empty &= pc.fill_null(is_empty, True).to_numpy(zero_copy_only=False)
    return empty & np.isin(lines, _blank_lines(raw))


def _blank_lines(raw: bytes) -> np.ndarray:
    """1-based numbers of the empty (or lone CR) physical lines."""
    data = np.frombuffer(raw, np.uint8)
    newlines = np.flatnonzero(data == 10)
    starts = np.concatenate([[0], newlines + 1])
    ends = np.concatenate([newlines, [len(data)]])
    length = ends - starts
    blank = (length == 0) | ((length == 1) & (data[np.minimum(starts, len(data) - 1)] == 13))
    if raw.endswith(b"\n"):
        blank = blank[:-1]  # after the final newline there is no line
    return np.flatnonzero(blank) + 1


def _null_where_invalid(table: pa.Table, strings: list[str]) -> pa.Table:
    """Values of rows with a read error become null: they were never read correctly."""
    bad = pc.not_equal(table.column(READ_ERROR), "")
    if not pc.any(bad).as_py():
        return table
    for c in strings:
        i = table.column_names.index(c)
        table = table.set_column(i, c, pc.if_else(bad, pa.scalar(None, pa.string()),
                                                  table.column(c)))
    return table


def _bad_rows(schema: pa.Schema, lines, errors: list[str]) -> pa.Table:
    n = len(errors)
    cols = {f.name: pa.nulls(n, f.type) for f in schema}
    cols[LINE] = pa.array(lines, pa.int64())
    cols[READ_ERROR] = pa.array(errors, pa.string())
    return pa.table(cols)


def _empty(columns: list[str]) -> pa.Table:
    return _bad_rows(pa.schema([(c, pa.string()) for c in dict.fromkeys(columns)]), [], [])


def _mark_invalid_utf8(raw: bytes) -> tuple[bytes, str | None]:
    """(bytes that are valid UTF-8, the marker put where invalid bytes were, or None).

    The marker is a Unicode noncharacter (reserved for exactly this internal use) that the file
    does not already contain; ASCII bytes (delimiters, quotes, newlines) are never replaced.
    """
    if _is_utf8(raw):
        return raw, None
    text = raw.decode("utf-8", "surrogateescape")  # each bad byte -> one lone surrogate
    marker = next(chr(c) for c in range(0xFDD0, 0xFDF0) if chr(c) not in text)
    return re.sub("[\udc80-\udcff]+", marker, text).encode("utf-8"), marker


def _is_utf8(raw: bytes) -> bool:
    # Validated in place by Arrow: no decoded copy of a large file.
    offsets = pa.py_buffer(np.array([0, len(raw)], np.int64).tobytes())
    try:
        pa.Array.from_buffers(pa.large_string(), 1, [None, offsets, pa.py_buffer(raw)]).validate(
            full=True)
        return True
    except pa.ArrowInvalid:
        return False


def parse_json_lines(raw: bytes, *, string_columns: list[str]) -> pa.Table:
    """JSON-lines bytes -> the objects' fields + `_line` + `_read_error`, rows in file order.

    A line that is not UTF-8 or not one JSON object comes out with null values and its reason;
    blank lines are not rows.
    """
    raw, marker = _mark_invalid_utf8(raw)
    lines = raw.split(b"\n")
    numbered = [(i + 1, line) for i, line in enumerate(lines) if line.strip()]
    errors = {n: INVALID_UTF8 for n, line in numbered
              if marker is not None and marker.encode() in line}
    good = [(n, line) for n, line in numbered if n not in errors]
    try:
        table = _read_json_objects([line for _, line in good])
    except pa.ArrowInvalid:  # find the lines that are not objects, read the rest
        errors.update({n: NOT_A_JSON_OBJECT for n, line in good if not _is_json_object(line)})
        good = [(n, line) for n, line in good if n not in errors]
        try:
            table = _read_json_objects([line for _, line in good])
        except pa.ArrowInvalid as exc:  # every line is an object: their types disagree
            raise UnreadableFile(f"unreadable JSON lines: {exc}") from None
    if table is None:
        table = _empty(string_columns).drop_columns([LINE, READ_ERROR])
    table = table.append_column(LINE, pa.array([n for n, _ in good], pa.int64())).append_column(
        READ_ERROR, pa.array([""] * len(good), pa.string()))
    if not errors:
        return table
    columns = pa.schema([f for f in table.schema if f.name not in (LINE, READ_ERROR)])
    bad = _bad_rows(columns, sorted(errors), [errors[n] for n in sorted(errors)])
    both = pa.concat_tables([table, bad])
    return both.take(pc.sort_indices(both.column(LINE)))


def _read_json_objects(lines: list[bytes]) -> pa.Table | None:
    if not lines:
        return None
    return pajson.read_json(io.BytesIO(b"\n".join(lines)),
                            read_options=pajson.ReadOptions(use_threads=False))


def _is_json_object(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False
