"""Ray Data: read -> validate -> tokenize -> split, for the layouts users have.

read.py: formats, filesystems, paths, column names, DataError. rows.py: CSV/TSV/JSONL rows with
their line and read error. strings.py: string-like Arrow columns as `string`. labels.py: label layouts, row
validation (`Normalize`). tokenize.py: tokenization, padding, length buckets. split.py: `prepare`.
"""

from mlc_dist.data.labels import (Normalize, drop_unscored, label_space_for, read_label_table,
                                  read_labelled, read_unlabelled, wide_labels)
from mlc_dist.data.read import (FEATURES, KEY, LABELS, LINE, PATH, READ_ERROR, TEXT, TEXT_PAIR,
                                DataError, as_data_error, detect_format, expand_paths,
                                file_format, read_table)
from mlc_dist.data.split import Prepared, SplitStats, prepare, stratified_split
from mlc_dist.data.tokenize import (BUCKET_WINDOW_BATCHES, Tokenize, encode,
                                    length_buckets, load_tokenizer, pad_batch, padded_width,
                                    padding_of)

__all__ = [
    # read.py
    "DataError", "as_data_error", "expand_paths", "detect_format", "file_format", "read_table",
    "TEXT", "TEXT_PAIR", "LABELS", "KEY", "PATH", "FEATURES", "LINE", "READ_ERROR",
    # labels.py
    "read_label_table", "label_space_for", "Normalize", "wide_labels", "drop_unscored",
    "read_labelled", "read_unlabelled",
    # tokenize.py
    "Tokenize", "load_tokenizer", "pad_batch", "padded_width", "padding_of",
    "BUCKET_WINDOW_BATCHES",
    "length_buckets", "encode",
    # split.py
    "SplitStats", "Prepared", "stratified_split", "prepare",
]
