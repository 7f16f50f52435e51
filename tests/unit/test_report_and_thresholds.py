"""report.py writes readable PNGs and HTML; stored thresholds drive Scorer's predictions."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from mlc_dist import metrics, report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NAMES = ["toxic", "obscene", "threat", "insult"]


@pytest.fixture(scope="module")
def evaluated():
    rng = np.random.default_rng(0)
    labels = (rng.random((200, 4)) < [0.3, 0.15, 0.0, 0.2]).astype(np.int8)  # threat: none
    probs = np.clip(labels * 0.4 + rng.random(labels.shape) * 0.6, 0, 1)
    tuned = metrics.tune_thresholds(labels, probs, min_support=35)  # obscene: ~30, falls back
    return labels, probs, metrics.report(labels, probs, tuned.values, NAMES, rules=tuned.meta())


def test_report_writes_valid_pngs_and_html(tmp_path, evaluated):
    from PIL import Image

    labels, probs, evaluation = evaluated
    history = [{"step": s, "loss": 1.0 / s} for s in range(1, 9)] + [
        {"step": 8, "val_mean_auc": 0.8, "val_micro_f1": 0.5, "val_macro_f1": 0.4}]
    page = report.write_report(str(tmp_path), "unit", evaluation, labels, probs,
                               {"train": [60, 30, 0, 40], "validation": [6, 3, 0, 4]}, history)
    pngs = sorted(p for p in os.listdir(tmp_path) if p.endswith(".png"))
    assert pngs == ["confusion.png", "history.png", "label_sets.png", "labels.png",
                    "pr_curves.png"]
    for name in pngs:
        path = tmp_path / name
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        with Image.open(path) as img:
            img.verify()
        with Image.open(path) as img:
            assert img.width >= 300 and img.height >= 200
    text = open(page).read()
    assert text.startswith("<!doctype html>") and text.rstrip().endswith("</html>")
    for name in pngs:
        assert f'src="{name}"' in text
    # The per-label table has one row per label, and the undefined label says so.
    assert text.count("<tr>") >= len(NAMES) + 1 and "threat" in text and "n/a" in text


def test_tables_one_row_per_label(evaluated):
    _, _, evaluation = evaluated
    frame = report.per_label_table(evaluation)
    assert list(frame["label"]) == NAMES
    md = report.to_markdown(frame)
    assert len(md.strip().splitlines()) == 2 + len(NAMES)
    threat = [line for line in md.splitlines() if line.startswith("| threat")][0]
    assert "n/a" in threat  # no positives: undefined, not 0
    text = report.to_text(evaluation)
    assert "macro_f1=" in text and "macro_f1_tuned=" in text and "subset_accuracy" in text
    # Each threshold's rule is in the table: obscene (about 30 positives < 35) fell back to
    # matching its prevalence, threat (none) to the global threshold; the others are their own.
    rules = dict(zip(frame["label"], frame["threshold_rule"]))
    assert rules == {"toxic": "tuned", "obscene": "fallback_prevalence",
                     "threat": "fallback_global", "insult": "tuned"}
    assert [f["label"] for f in evaluation["threshold_fallbacks"]] == ["obscene", "threat"]
    assert "fallback_global" in threat and "fallback_prevalence" in text


def test_stored_thresholds_change_scorer_predictions(tmp_path, tiny_bert):
    from transformers import AutoTokenizer

    from mlc_dist.artifacts import ModelMeta, read_meta, save_export, write_meta
    from mlc_dist.config import ModelConfig
    from mlc_dist.labels import LabelSpace
    from mlc_dist.models import build_model
    from mlc_dist.scoring import Scorer

    space = LabelSpace.from_names(NAMES)
    low, high = str(tmp_path / "low"), str(tmp_path / "high")
    save_export(low, build_model(ModelConfig(name=tiny_bert), space),
                AutoTokenizer.from_pretrained(tiny_bert),
                ModelMeta(space, [0.0] * 4, "text", None, 32, tiny_bert))
    shutil.copytree(low, high)
    meta = read_meta(high)
    meta.thresholds = [1.0, 1.0, 0.0, 1.0]
    write_meta(high, meta)
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    ids = np.empty(3, dtype=object)
    ids[:] = [np.asarray(tok(t)["input_ids"], np.int32) for t in ["you fool", "nice map", "ok"]]
    batch = {"id": np.array(["a", "b", "c"]), "input_ids": ids}
    out_low, out_high = Scorer(low, ["id"])(batch), Scorer(high, ["id"])(batch)
    for name in NAMES:  # same model, same scores
        np.testing.assert_allclose(out_low[f"score_{name}"], out_high[f"score_{name}"])
    assert all(out_low[f"pred_{n}"].tolist() == [1, 1, 1] for n in NAMES)
    assert [out_high[f"pred_{n}"].tolist() for n in NAMES] == [[0] * 3, [0] * 3, [1] * 3, [0] * 3]
