"""The scoring input policy: which rows are scored, truncated, quarantined, or fail the job.

A Ray Data UDF on Arrow batches; every row comes out with a `_reason` ("" = score as is), so no
row is dropped silently and the job can audit rows in = rows out + rows quarantined.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mlc_dist.data import LINE, PATH, READ_ERROR, TEXT, TEXT_PAIR, DataError
from mlc_dist.data.rows import READ_ERRORS
from mlc_dist.data.strings import as_string

HIDDEN = (PATH, LINE, READ_ERROR)  # reader columns, never named to users as data columns

REASON = "_reason"
OK, TRUNCATED = "", "truncated"
NULL_TEXT, NON_STRING, INVALID_UTF8, TOO_LONG = "null_text", "non_string_text", "invalid_utf8", \
    "too_long"
# Rows of CSV/TSV/JSONL files that could not be read (data/rows.py): invalid_utf8,
# wrong_field_count, not_a_json_object.
BAD = (NULL_TEXT, NON_STRING, INVALID_UTF8, *READ_ERRORS)
SCORED = (OK, TRUNCATED)


class CheckText:
    """Raw batch -> passthrough columns, `text` (str; "" on bad rows), `_line` (the row's line in
    a CSV/TSV/JSONL file, else null) and `_reason`."""

    def __init__(self, text_column: str, passthrough: list[str], on_bad_text: str,
                 on_long_text: str, max_chars: int, pair_column: str | None = None):
        self.text_column, self.passthrough, self.pair_column = text_column, passthrough, pair_column
        self.on_bad_text, self.on_long_text, self.max_chars = on_bad_text, on_long_text, max_chars

    def __call__(self, batch: pa.Table) -> pa.Table:
        missing = [c for c in [self.text_column, *filter(None, [self.pair_column]),
                               *self.passthrough] if c not in batch.column_names]
        if missing:
            raise DataError(f"{_where(batch)}: missing column(s) {missing}; columns are "
                            f"{[c for c in batch.column_names if c not in HIDDEN]}")
        text, reason = _as_text(batch.column(self.text_column))
        long = pc.fill_null(pc.greater(pc.utf8_length(text), self.max_chars), False)
        long = long.to_numpy(zero_copy_only=False) & (reason == OK)
        if long.any():
            if self.on_long_text == "truncate":
                text = pc.if_else(pa.array(long), pc.utf8_slice_codeunits(text, 0, self.max_chars),
                                  text)
                reason[long] = TRUNCATED
            else:
                reason[long] = TOO_LONG
        out = _as_ids(batch, self.passthrough, reason)
        if READ_ERROR in batch.column_names:  # the reader's verdict comes first: the row is unread
            read_error = batch.column(READ_ERROR).to_numpy(zero_copy_only=False)
            reason[read_error != ""] = read_error[read_error != ""]
        bad = np.isin(reason, BAD)
        if bad.any() and self.on_bad_text == "fail":
            self._fail(batch, reason, int(np.argmax(bad)))
        out[TEXT] = pc.fill_null(text, "")
        if self.pair_column:  # the second text of pair models is optional context: null -> ""
            pair = as_string(batch.column(self.pair_column))
            out[TEXT_PAIR] = pc.fill_null(pair[0] if pair else
                                          batch.column(self.pair_column).cast(pa.string()), "")
        out[LINE] = (batch.column(LINE) if LINE in batch.column_names
                     else pa.nulls(len(batch), pa.int64()))
        out[REASON] = pa.array(reason, pa.string())
        return pa.table(out)

    def _fail(self, batch: pa.Table, reason: np.ndarray, i: int):
        where = _where(batch, i)
        if LINE in batch.column_names:
            where += f": line {batch.column(LINE)[i].as_py()}"
        ids = ", ".join(f"{c}={batch.column(c)[i].as_py()!r}" for c in self.passthrough
                        if c != PATH)
        what = (f"column {self.text_column!r} is" if reason[i] in (NULL_TEXT, NON_STRING)
                else "row has")
        raise DataError(f"{where}: row {ids or i}: {what} {reason[i].replace('_', ' ')} "
                        "(score.on_bad_text: fail)")


def quarantine_schema(id_fields: list[pa.Field]) -> pa.Schema:
    """What `_quarantine/` holds per row: its ids, input file, line (CSV/TSV/JSONL; else null)
    and reason."""
    return pa.schema([*id_fields, pa.field("input_file", pa.string()),
                      pa.field("input_line", pa.int64()), pa.field("reason", pa.string())])


def quarantine_rows(batch: pa.Table, passthrough: list[str], input_file: str,
                    schema: pa.Schema) -> pa.Table:
    """Quarantined rows of a checked (and scored) batch as `quarantine_schema` rows."""
    cols = {c: batch.column(c) for c in passthrough}
    cols["input_file"] = pa.array([input_file] * len(batch), pa.string())
    # The line went through numpy batches on the way: nulls may come back as NaN.
    line = batch.column(LINE).to_numpy(zero_copy_only=False) if LINE in batch.column_names \
        else np.full(len(batch), np.nan)
    cols["input_line"] = pa.array(line, from_pandas=True).cast(pa.int64())
    cols["reason"] = batch.column(REASON)
    return pa.table(cols).cast(schema)


def _as_text(col: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """(string array with nulls where not a usable text, reason per row)."""
    n = len(col)
    reason = np.full(n, OK, dtype=object)
    normalised = as_string(col)  # any string-like type is text: dictionary, string_view, binary
    if normalised is None:
        return pa.nulls(n, pa.string()), np.full(n, NON_STRING, dtype=object)
    col, invalid = normalised
    reason[invalid] = INVALID_UTF8
    nulls = col.is_null().to_numpy(zero_copy_only=False)
    reason[nulls & (reason == OK)] = NULL_TEXT
    return col, reason


def _as_ids(batch: pa.Table, columns: list[str], reason: np.ndarray) -> dict[str, pa.Array]:
    """String-like id columns as `string`; an id that is not UTF-8 quarantines its row."""
    out = {}
    for c in columns:
        normalised = as_string(batch.column(c))
        if normalised is None:  # numeric ids stay as they are
            out[c] = batch.column(c)
            continue
        out[c], invalid = normalised
        reason[invalid & np.isin(reason, SCORED)] = INVALID_UTF8
    return out


def _where(batch: pa.Table, row: int = 0) -> str:
    """The file a row came from (a batch can span files)."""
    if PATH in batch.column_names and len(batch):
        return str(batch.column(PATH)[row].as_py())
    return "<input>"
