"""CSV/TSV/JSON-lines parsing row by row (data/rows.py) on real bytes: no Ray."""

import pyarrow as pa

from mlc_dist.data import rows

COLS = ["id", "text"]


def csv(raw: bytes, **kw):
    args = {"delimiter": ",", "quoting": True, "header": True, "column_names": None,
            "string_columns": COLS} | kw
    return rows.parse_delimited(raw, **args).to_pydict()


def test_csv_bad_rows_are_marked_with_their_line_and_good_rows_kept():
    raw = (b'id,text\n'
           b'1,"a quoted value\nover two lines"\n'    # lines 2-3
           b'\n'                                      # 4: a blank line is not a row
           b'2,null\n'                                # 5: null-like strings stay text
           b'3,one,two\n'                             # 6: wrong number of fields
           b'NA,\n'                                   # 7
           b'4,"caf\xe9 au lait"\n'                   # 8: Latin-1, not UTF-8
           b'5,"ok ""quoted""\r\nagain"\r\n'          # 9-10
           b'N/A,nan\n')                              # 11
    out = csv(raw)
    assert out["_line"] == [2, 5, 6, 7, 8, 9, 11]
    assert out["_read_error"] == ["", "", "wrong_field_count", "", "invalid_utf8", "", ""]
    assert out["id"] == ["1", "2", None, "NA", None, "5", "N/A"]
    assert out["text"] == ["a quoted value\nover two lines", "null", None, "", None,
                           'ok "quoted"\r\nagain', "nan"]


def test_unquoted_tsv_with_a_stray_tab_and_no_header():
    raw = b"a\tfine\nb\tone\tstray tab\n\nc\tNA\n"
    out = csv(raw, delimiter="\t", quoting=False, header=False, column_names=COLS)
    assert out == {"id": ["a", None, "c"], "text": ["fine", None, "NA"], "_line": [1, 2, 4],
                   "_read_error": ["", "wrong_field_count", ""]}


def test_empty_file_is_an_empty_input_with_the_columns_asked_for():
    table = rows.parse_delimited(b"", delimiter=",", quoting=True, header=True,
                                 column_names=None, string_columns=COLS)
    assert table.num_rows == 0 and table.column_names == [*COLS, "_line", "_read_error"]
    assert rows.parse_json_lines(b"", string_columns=COLS).num_rows == 0


def test_json_lines_bad_lines_are_marked_with_their_line():
    raw = (b'{"id": "NA", "text": "null"}\n'
           b'\n'
           b'[1, 2]\n'
           b'{"id": "2", "text": "caf\xe9"}\n'
           b'{"id": "3", "text": \n'
           b'{"id": "4", "text": ""}\r\n')
    out = rows.parse_json_lines(raw, string_columns=COLS).to_pydict()
    assert out == {"id": ["NA", None, None, None, "4"], "text": ["null", None, None, None, ""],
                   "_line": [1, 3, 4, 5, 6],
                   "_read_error": ["", "not_a_json_object", "invalid_utf8", "not_a_json_object",
                                   ""]}
    assert rows.parse_json_lines(raw, string_columns=COLS).schema.field("_line").type == pa.int64()
