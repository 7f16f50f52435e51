"""String-like Arrow columns as plain UTF-8 `string`: dictionary (pandas categoricals),
string_view, large_string, binary. Owns that normalisation only; what a bad value means is the
caller's (training: an error, scoring: a quarantine reason).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def is_string_like(typ: pa.DataType) -> bool:
    if pa.types.is_dictionary(typ):
        return is_string_like(typ.value_type)
    return (pa.types.is_string(typ) or pa.types.is_large_string(typ)
            or pa.types.is_string_view(typ) or pa.types.is_binary(typ)
            or pa.types.is_large_binary(typ) or pa.types.is_binary_view(typ)
            or pa.types.is_null(typ))


def as_string(col: pa.Array | pa.ChunkedArray) -> tuple[pa.Array, np.ndarray] | None:
    """(a `string` array, a mask of the rows whose bytes were not UTF-8 and are now null), or
    None for a column that is not string-like (numbers, lists, ...)."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks else pa.array([], col.type)
    if not is_string_like(col.type):
        return None
    n = len(col)
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    if pa.types.is_null(col.type):
        return pa.nulls(n, pa.string()), np.zeros(n, bool)
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type) \
            or pa.types.is_string_view(col.type):
        # A reader that skipped UTF-8 validation can leave invalid bytes in a string column.
        col = col.cast(pa.binary_view() if pa.types.is_string_view(col.type) else
                       pa.large_binary())
    try:
        return col.cast(pa.string()), np.zeros(n, bool)
    except pa.ArrowInvalid:  # some rows are not UTF-8: decode row by row (rare)
        values, bad = [], np.zeros(n, bool)
        for i, v in enumerate(col.to_pylist()):
            try:
                values.append(None if v is None else v.decode("utf-8"))
            except UnicodeDecodeError:
                values.append(None)
                bad[i] = True
        return pa.array(values, pa.string()), bad
