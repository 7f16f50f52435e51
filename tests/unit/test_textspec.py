"""The text from several columns (data.text_columns / data.text_template): the config's checks,
the separator resolved against a tokenizer, and the text composed from an Arrow table."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from mlc_dist.config import DataConfig, JobConfigError, validate_job
from mlc_dist.data import DataError, PATH, textspec
from mlc_dist.data.strings import as_string

VALUEEVAL = ["Conclusion", "Stance", "Premise"]
RESOLVED = "{Conclusion} [SEP] {Stance} [SEP] {Premise}"


def data_cfg(**text) -> DataConfig:
    return DataConfig(label_columns=["a"], **text)


def test_text_columns_resolve_to_a_template_with_the_separator_spelled_out():
    cfg = textspec.resolve(data_cfg(text_columns=VALUEEVAL), "[SEP]")
    assert cfg.text_template == RESOLVED and cfg.text_column == RESOLVED
    assert cfg.text_columns is None and textspec.input_columns(cfg) == VALUEEVAL
    assert textspec.resolve(cfg, "</s>") is cfg  # resolved once; the export keeps it
    # What a worker gets (model_dump -> validate) is the same resolved config.
    assert DataConfig.model_validate(cfg.model_dump()) == cfg
    template = textspec.resolve(data_cfg(text_template="{sep}{Stance}: {Premise} {{x}}"), "{S}")
    assert template.text_template == "{{S}}{Stance}: {Premise} {{x}}"
    assert textspec.compose(pa.table({"Stance": ["against"], "Premise": ["p"]}),
                            template.text_template).to_pylist() == ["{S}against: p {x}"]
    # A template without {sep} needs no tokenizer.
    assert textspec.resolve(data_cfg(text_template="{Stance}: {Premise}"), None).text_column \
        == "{Stance}: {Premise}"
    with pytest.raises(ValueError, match="no separator token"):
        textspec.resolve(data_cfg(text_columns=VALUEEVAL), None)


def test_an_unresolved_template_is_not_read():
    with pytest.raises(ValueError, match="resolved against the model's tokenizer"):
        textspec.input_columns(data_cfg(text_columns=VALUEEVAL))


@pytest.mark.parametrize("data,message", [
    ({"text_columns": VALUEEVAL, "text_template": "{Premise}"}, "choose one of"),
    ({"text_columns": VALUEEVAL, "text_column": "Premise"}, "text_column is not used"),
    ({"text_columns": []}, "at least one column"),
    ({"text_columns": ["a", "a"]}, "names a column twice"),
    ({"text_columns": ["a:b"]}, "cannot be joined"),
    ({"text_columns": ["sep"]}, "separator token"),
    ({"text_template": "{Premise!r}"}, "format specs and conversions"),
    ({"text_template": "{} {Premise}"}, "names no column"),
    ({"text_template": "no fields {sep}"}, "names no column"),
    ({"text_template": "{Premise"}, "literal brace"),
])
def test_bad_text_inputs_are_refused_by_key(data, message):
    with pytest.raises(JobConfigError, match=message) as err:
        validate_job({"run": {"name": "r"}, "data": {"label_columns": ["a"], **data}})
    assert "data" in str(err.value)


def test_text_inputs_are_not_tabular():
    with pytest.raises(JobConfigError, match="tabular input"):
        validate_job({"run": {"name": "r"}, "model": {"kind": "mlp"},
                      "data": {"label_columns": ["a"], "feature_columns": ["x"],
                               "text_columns": ["t"]}})


def test_composed_values_nulls_and_blanks():
    table = pa.table({
        "Conclusion": ["We should ban cloning", None, None, "  ", "c"],
        # pandas categoricals / Parquet dictionaries, and string_view columns, read as text
        "Stance": pa.array(["in favor of", None, "against", None, "against"]).dictionary_encode(),
        "Premise": pa.array(["it harms", None, "p", "", None], pa.string_view()),
    })
    assert textspec.compose(table, RESOLVED).to_pylist() == [
        "We should ban cloning [SEP] in favor of [SEP] it harms",
        None,  # every referenced column null: a null text (flagged, quarantined)
        " [SEP] against [SEP] p",  # one null reads as ""
        "",  # every one null or blank: an empty text
        "c [SEP] against [SEP] ",
    ]


def test_numbers_are_text_and_bytes_that_are_not_utf8_stay_for_the_caller_to_flag():
    table = pa.table({"n": pa.array([1, None], pa.int64()), "f": [1.5, 2.0],
                      "b": pa.array([b"ok", b"\xff"], pa.binary())})
    text = textspec.compose(table, "{n}/{f}/{b}")
    assert text.type == pa.large_binary()
    values, invalid = as_string(text)
    assert values.to_pylist() == ["1/1.5/ok", None] and invalid.tolist() == [False, True]


def test_a_missing_column_names_the_file_and_the_columns():
    table = pa.table({"Conclusion": ["c"], "Premise": ["p"],
                      PATH: ["/data/arguments-training.tsv"]})
    with pytest.raises(DataError, match=r"/data/arguments-training.tsv: missing column\(s\) "
                                        r"\['Stance'\].*columns are \['Conclusion', 'Premise'\]"):
        textspec.compose(table, RESOLVED)
    table = pa.table({"Conclusion": [[1]], "Stance": ["s"], "Premise": ["p"]})
    with pytest.raises(DataError, match="'Conclusion'.*cannot be part of the text"):
        textspec.compose(table, RESOLVED)


def test_the_compose_udf_adds_the_column_named_by_the_template():
    table = pa.table({"Argument ID": ["A1"], "Conclusion": ["c"], "Stance": ["against"],
                      "Premise": ["p"]})
    out = textspec.ComposeText(RESOLVED)(table)
    assert out.column_names == [*table.column_names, RESOLVED]
    assert out.column(RESOLVED).to_pylist() == ["c [SEP] against [SEP] p"]


def test_rows_for_predict_need_every_column():
    assert textspec.compose_rows(RESOLVED, [{"Conclusion": "c", "Stance": "against",
                                             "Premise": None}]) == ["c [SEP] against [SEP] "]
    with pytest.raises(DataError, match=r"\['Conclusion', 'Stance', 'Premise'\]"):
        textspec.compose_rows(RESOLVED, [{"Conclusion": "c"}])
    with pytest.raises(DataError, match="JSON object"):
        textspec.compose_rows(RESOLVED, ["just a text"])


def test_the_separator_is_the_tokenizers_and_its_literal_is_the_special_token(tiny_bert):
    from transformers import AutoTokenizer

    from mlc_dist.config import ModelConfig
    from mlc_dist.models import separator_token

    assert separator_token(ModelConfig(name=tiny_bert)) == "[SEP]"
    assert separator_token(ModelConfig(kind="encoder")) == "[SEP]"
    assert separator_token(ModelConfig(kind="mlp")) is None
    job = validate_job({"run": {"name": "r"}, "model": {"name": tiny_bert},
                        "data": {"label_columns": ["a"], "text_columns": VALUEEVAL}})
    assert textspec.resolve_job(job).data.text_template == RESOLVED
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    ids = tokenizer("we should ban cloning [SEP] against [SEP] it harms")["input_ids"]
    sep = tokenizer.sep_token_id
    # [CLS] ... [SEP] ... [SEP] ... [SEP]: the two in the text are the special token itself.
    assert int(np.sum(np.asarray(ids) == sep)) == 3 and ids[-1] == sep
    assert ids == tokenizer("we should ban cloning")["input_ids"][:-1] + [sep] + \
        tokenizer("against")["input_ids"][1:-1] + [sep] + tokenizer("it harms")["input_ids"][1:]


def test_the_int8_parity_sample_reads_the_composed_text(tiny_bert, tmp_path):
    import pyarrow.parquet as pq

    from mlc_dist.artifacts import read_meta, write_meta
    from mlc_dist.data import TEXT, Tokenize
    from mlc_dist.labels import LabelSpace
    from mlc_dist.scoring import parity

    from ..conftest import export_tiny_model

    model_dir = export_tiny_model(tmp_path / "m", tiny_bert, LabelSpace.from_names(["a"]))
    meta = read_meta(model_dir)
    meta.text_column = meta.text_template = RESOLVED
    write_meta(model_dir, meta)
    pq.write_table(pa.table({"Conclusion": ["c"], "Stance": ["against"], "Premise": ["p"],
                             "a": [1]}), tmp_path / "sample.parquet")
    batch, labels = parity.read_sample(str(tmp_path / "sample.parquet"), model_dir, meta)
    expected = Tokenize(model_dir, meta.max_length, keep=[])(
        {TEXT: np.asarray(["c [SEP] against [SEP] p"], dtype=object)})
    assert batch["input_ids"][0].tolist() == expected["input_ids"][0].tolist()
    assert labels["a"].tolist() == [1]


def test_without_ids_scoring_passes_through_every_column_but_the_texts():
    from mlc_dist.artifacts import ModelMeta
    from mlc_dist.labels import LabelSpace
    from mlc_dist.scoring.pipeline import passthrough_columns

    meta = ModelMeta(LabelSpace.from_names(["a"]), [0.5], RESOLVED, None, 64, "m",
                     text_template=RESOLVED)
    job = validate_job({"run": {"name": "r"}, "data": {"label_columns": ["a"]}})
    names = ["topic", "Conclusion", "Stance", "Premise", PATH]
    assert passthrough_columns(job, meta, names) == ["topic"]
