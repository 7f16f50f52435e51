"""A text from three columns (ValueEval's conclusion, stance and premise) on a real local Ray
cluster: one training run, then scoring, evaluation and predict build the text training built."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlc_dist import data, evaluate, metrics, scoring, train
from mlc_dist.artifacts import read_meta
from mlc_dist.config import validate_job
from mlc_dist.scoring import parity
from mlc_dist.data import textspec
from mlc_dist.predict import predict_texts

COLUMNS = ["Conclusion", "Stance", "Premise"]
TEMPLATE = "{Conclusion} [SEP] {Stance} [SEP] {Premise}"
LABELS = ["security", "benevolence"]


def arguments(n: int, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    topics = ["human cloning", "fast food", "whaling", "school uniforms", "nuclear power"]
    words = "because it is harmful costly safe kind fair cruel needed useful wrong".split()
    stance = rng.choice(["in favor of", "against"], n)
    premise = [" ".join(rng.choice(words, rng.integers(3, 12))) for _ in range(n)]
    frame = pd.DataFrame({"Argument ID": [f"A{i:04d}" for i in range(n)],
                          "Conclusion": [f"We should ban {t}" for t in rng.choice(topics, n)],
                          "Stance": stance, "Premise": premise})
    # Labels the text decides: the stance, and a word of the premise.
    frame["security"] = (stance == "against").astype(int)
    frame["benevolence"] = np.array(["kind" in p for p in premise], dtype=int)
    return frame


def composed(row) -> str:
    return f"{row['Conclusion']} [SEP] {row['Stance']} [SEP] {row['Premise']}"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_bert, ray_cluster):
    tmp = tmp_path_factory.mktemp("text_columns")
    frame = arguments(160)
    (tmp / "in").mkdir()
    frame.to_csv(tmp / "arguments.tsv", sep="\t", index=False)
    # What is scored: Parquet, the stance a dictionary column (a pandas categorical), one
    # argument with no text at all (a null text: quarantined).
    drop = frame[["Argument ID", *COLUMNS]].iloc[:40].to_dict("list")
    drop["Argument ID"].append("empty")
    for c in COLUMNS:
        drop[c].append(None)
    table = pa.table({c: pa.array(v, pa.string()) for c, v in drop.items()})
    table = table.set_column(2, "Stance", table.column("Stance").dictionary_encode())
    pq.write_table(table, tmp / "in" / "drop.parquet")
    job = validate_job({
        "run": {"name": "three-columns", "output_dir": str(tmp / "runs")},
        "data": {"train": str(tmp / "arguments.tsv"), "quoting": False,
                 "text_columns": COLUMNS, "id_columns": ["Argument ID"],
                 "label_columns": LABELS, "max_length": 64},
        "model": {"name": tiny_bert},
        "train": {"max_steps": 3, "batch_size_per_worker": 16, "lr": 1e-3, "warmup_ratio": 0.0,
                  "log_every_steps": 1},
        "scaling": {"num_workers": 1},
        "score": {"input": str(tmp / "in"), "output": str(tmp / "scores"), "window_rows": 32},
        "evaluate": {"input": str(tmp / "arguments.tsv"), "output": str(tmp / "evaluation")},
    })
    summary = train.fit(job)
    return job, summary, frame


def scorer_probs(model_dir: str, texts: list[str], backend: str = "torch") -> np.ndarray:
    """What the Scorer gives for `texts` fed as the model's text (no columns involved)."""
    meta = read_meta(model_dir)
    batch = data.Tokenize(model_dir, meta.max_length, keep=[])(
        {data.TEXT: np.asarray(texts, dtype=object)})
    out = scoring.Scorer(model_dir, [], backend=backend)(batch)
    return np.stack([out[c] for c in meta.outputs.score_columns()], axis=1)


def test_the_export_keeps_the_resolved_template(trained):
    job, summary, _ = trained
    assert summary["steps"] == 3
    meta = read_meta(job.model_dir)
    assert meta.text_template == TEMPLATE and meta.text_column == TEMPLATE
    saved = json.loads(open(f"{job.model_dir}/mlc_dist.json").read())
    assert saved["text_template"] == TEMPLATE


def test_training_reads_the_composed_text(trained):
    job, _, frame = trained
    prepared = data.prepare(textspec.resolve_job(job).data, job.train.seed)
    rows = prepared.train.select_columns([data.TEXT, "Argument ID"]).take_all()
    expected = {r["Argument ID"]: composed(r) for _, r in frame.iterrows()}
    assert len(rows) > 100
    assert all(r[data.TEXT] == expected[r["Argument ID"]] for r in rows)


def test_score_predict_and_evaluate_build_the_same_text(trained):
    job, _, frame = trained
    model_dir = job.model_dir
    texts = [composed(r) for _, r in frame.iterrows()]
    # score and evaluate run the backend the job resolves to (the ONNX graph here: CPU, fp32);
    # its scores equal torch's to 1e-5, but near-tied scores can swap and move an AUC.
    backend = parity.resolve_backend(job, model_dir).score.backend
    assert backend == "onnx"
    expected = scorer_probs(model_dir, texts, backend)
    names = [f"score_{n}" for n in LABELS]

    summary = scoring.run(job)
    assert (summary["rows_in"], summary["rows_out"], summary["rows_quarantined"]) == (41, 40, 1)
    scores = scoring.read_scores(job.score.output).to_pandas().set_index("Argument ID")
    assert "Premise" not in scores.columns  # the text's columns are input, not passed through
    got = scores.loc[frame["Argument ID"][:40], names].to_numpy()
    np.testing.assert_allclose(got, expected[:40], atol=1e-5, rtol=0)
    quarantined = pq.read_table(f"{job.score.output}/_quarantine").to_pylist()
    assert [(q["Argument ID"], q["reason"]) for q in quarantined] == [("empty", "null_text")]

    rows = frame[COLUMNS].iloc[:3].to_dict("records")
    for row, probs in zip(predict_texts(model_dir, rows), expected[:3]):
        assert dict((n, p) for n, p, _ in row) == pytest.approx(
            dict(zip(LABELS, probs.tolist())), abs=1e-5)

    evaluation = evaluate.run(job)
    reference = metrics.report(frame[LABELS].to_numpy(np.float32), expected,
                               read_meta(model_dir).thresholds, LABELS)
    assert evaluation["mean_auc"] == pytest.approx(reference["mean_auc"], abs=1e-6)
    assert [p["auc"] for p in evaluation["per_label"]] == pytest.approx(
        [p["auc"] for p in reference["per_label"]], abs=1e-6)
