"""The model's text built from several columns: `data.text_columns` (joined with the tokenizer's
separator token) or `data.text_template` (format fields naming columns, `{sep}` the separator).

Owns the template: its checks, its resolution against a tokenizer's separator (once, on the
driver, when training starts; the export's metadata keeps the result) and the text it gives an
Arrow table, so training, evaluation, scoring and predict build exactly the same text.

A resolved config names its composed column by the template itself (`text_column` is the
template), so every code path that reads `text_column` reads the composed text.

Nulls: a null in one referenced column reads as ""; the text is null only when every referenced
column is null (then it is a null text, as a null `text_column` is today: left out of training,
quarantined by scoring), and "" when every one is null or blank (an empty text). Bytes that are
not UTF-8 stay in the text (a binary column), so training refuses and scoring quarantines the row
as it does for one text column.
"""

from __future__ import annotations

import json
import string

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mlc_dist.config import TEMPLATE_SEP as SEP, template_fields
from mlc_dist.data.strings import as_string


def configured_template(cfg) -> str | None:
    """The template as the job gives it (`{sep}` unresolved), or None for one text column."""
    if cfg.text_columns:
        return f" {{{SEP}}} ".join(f"{{{c}}}" for c in cfg.text_columns)
    return cfg.text_template


def is_resolved(cfg) -> bool:
    """Resolved (a data config, or model metadata which has nothing else): the template is the
    text column's name and has no `{sep}` left."""
    return (cfg.text_template is not None and not getattr(cfg, "text_columns", None)
            and cfg.text_column == cfg.text_template
            and SEP not in template_fields(cfg.text_template))


def needs_separator(cfg) -> bool:
    template = configured_template(cfg)
    return template is not None and not is_resolved(cfg) and SEP in template_fields(template)


def resolve(cfg, separator: str | None):
    """`cfg` (a DataConfig) with its template resolved: `{sep}` replaced by `separator`, kept in
    `text_template`, and `text_column` naming the composed column (the template). Unchanged when
    it has no template or is resolved already."""
    template = configured_template(cfg)
    if template is None or is_resolved(cfg):
        return cfg
    if SEP in template_fields(template) and not separator:
        raise ValueError("the model's tokenizer has no separator token: write data.text_template "
                         "without {sep}")
    out = []
    for literal, name, _, _ in string.Formatter().parse(template):
        out.append(_escape(literal))
        if name == SEP:
            out.append(_escape(separator))
        elif name is not None:
            out.append(f"{{{name}}}")
    resolved = "".join(out)
    return cfg.model_copy(update={"text_template": resolved, "text_columns": None,
                                  "text_column": resolved})


def resolve_job(job):
    """`job` (a JobConfig) with its data config resolved against its model's tokenizer; the
    tokenizer is loaded only when the template has `{sep}`."""
    if configured_template(job.data) is None or is_resolved(job.data):
        return job
    separator = None
    if needs_separator(job.data):
        from mlc_dist.models import separator_token

        separator = separator_token(job.model)
    return job.model_copy(update={"data": resolve(job.data, separator)})


def template_of(cfg) -> str | None:
    """The resolved template of a data config or model metadata (None: one text column); a
    template not resolved yet is a programming error."""
    template = cfg.text_template
    if template is None and not getattr(cfg, "text_columns", None):
        return None
    if not is_resolved(cfg):
        raise ValueError("data.text_columns/text_template are resolved against the model's "
                         "tokenizer first (textspec.resolve)")
    return template


def input_columns(cfg) -> list[str]:
    """The columns a row's text is read from: the template's fields, or the text column."""
    template = template_of(cfg)
    return template_fields(template) if template else [cfg.text_column]


def _escape(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def _where(table: pa.Table) -> str:
    from mlc_dist.data.read import PATH

    if PATH in table.column_names and len(table):
        return ", ".join(sorted(set(map(str, table.column(PATH).to_pylist())))) or "<input>"
    return "<input>"


def compose(table: pa.Table, template: str) -> pa.Array:
    """The text of each row of `table` (see the module's note on nulls); `string`, or
    `large_binary` when some referenced value is not UTF-8."""
    from mlc_dist.data.read import DataError, LINE, PATH, READ_ERROR

    fields = template_fields(template)
    missing = [f for f in fields if f not in table.column_names]
    if missing:
        hidden = (PATH, LINE, READ_ERROR)
        raise DataError(f"{_where(table)}: missing column(s) {missing} (named by the text "
                        f"template {template!r}); columns are "
                        f"{[c for c in table.column_names if c not in hidden]}")
    n = len(table)
    columns = {name: _bytes_of(table, name) for name in fields}
    all_null, all_blank = np.ones(n, bool), np.ones(n, bool)
    for name, (raw, blank) in columns.items():
        all_null &= raw.is_null().to_numpy(zero_copy_only=False)
        all_blank &= blank
    parts = []
    for literal, name, _, _ in string.Formatter().parse(template):
        if literal:
            parts.append(pa.scalar(literal.encode(), pa.large_binary()))
        if name is not None:
            parts.append(columns[name][0])
    empty = pa.scalar(b"", pa.large_binary())
    text = pa.array([], pa.large_binary()) if not n else pc.binary_join_element_wise(
        *parts, empty, null_handling="replace", null_replacement="")
    text = pc.if_else(pa.array(all_blank), empty, text)
    text = pc.if_else(pa.array(all_null), pa.scalar(None, pa.large_binary()), text)
    try:
        return text.cast(pa.string())
    except pa.ArrowInvalid:  # some row is not UTF-8: the caller's check names it
        return text


def _bytes_of(table: pa.Table, name: str) -> tuple[pa.Array, np.ndarray]:
    """(the column's values as bytes, which rows are null or blank)."""
    from mlc_dist.data.read import DataError

    col = table.column(name)
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks else pa.array([], col.type)
    normalised = as_string(col)
    if normalised is None:  # numbers, booleans: their text; lists and structs are not text
        try:
            text, invalid = col.cast(pa.string()), np.zeros(len(col), bool)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise DataError(f"{_where(table)}: column {name!r} ({col.type}) cannot be part of "
                            "the text") from None
        raw = text.cast(pa.large_binary())
    else:
        text, invalid = normalised
        if pa.types.is_dictionary(col.type):
            col = col.dictionary_decode()
        if pa.types.is_string_view(col.type):
            col = col.cast(pa.binary_view())
        raw = col.cast(pa.large_binary())
    blank = pc.equal(pc.utf8_trim_whitespace(pc.fill_null(text, "")), "").to_numpy(
        zero_copy_only=False) & ~invalid
    return raw, blank


class ComposeText:
    """Ray Data UDF: the composed text added as a column named by the template."""

    def __init__(self, template: str):
        self.template = template

    def __call__(self, batch: pa.Table) -> pa.Table:
        text = compose(batch, self.template)
        if self.template in batch.column_names:
            batch = batch.drop_columns([self.template])
        return batch.append_column(self.template, text)


def compose_rows(template: str, rows: list[dict]) -> list[str]:
    """The texts of a few rows given as {column: value} (predict); a row lacking a referenced
    column is an error listing the columns the template needs."""
    from mlc_dist.data.read import DataError

    fields = template_fields(template)
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or any(f not in row for f in fields):
            raise DataError(f"text {i + 1}: this model reads its text from the columns {fields} "
                            f"(template {template!r}); give each text as a JSON object with "
                            f"them, e.g. {json.dumps({f: '...' for f in fields})}")
    table = pa.table({f: pa.array([None if r[f] is None else str(r[f]) for r in rows],
                                  pa.string()) for f in fields})
    return [t if t is not None else "" for t in compose(table, template).to_pylist()]
