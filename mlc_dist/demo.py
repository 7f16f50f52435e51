"""A generated corpus in the Jigsaw toxic-comments layout whose labels follow from the text.

For the quickstart and tests: the real Jigsaw set cannot be shipped, its layout can.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from mlc_dist import storage

JIGSAW_LABELS = ("toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate")

_NEUTRAL = (
    "the article was about a small town and its history the editors added sources "
    "please check the talk page before you revert this edit i think the section on early "
    "life needs more citations thanks for the quick reply we can discuss the wording later "
    "the map shows the river and the old bridge near the station this page could use a photo "
    "of the building someone moved the paragraph about the election to the wrong place "
    "good work on the references table the dates in the infobox do not match the text"
).split()
_CUES = {
    "toxic": ("awful", "pathetic", "stupid", "garbage", "nonsense", "ridiculous"),
    "severe_toxic": ("disgusting", "vile", "repulsive", "despicable"),
    "obscene": ("crap", "damn", "bloody", "freaking"),
    "threat": ("hurt", "destroy", "punish", "regret", "hunt"),
    "insult": ("idiot", "fool", "clown", "loser", "moron"),
    "identity_hate": ("outsiders", "foreigners", "immigrants", "heathens"),
}
# Marginal rates, roughly Jigsaw's shape (toxic common, threat and identity_hate rare).
_RATES = {"toxic": 0.2, "obscene": 0.1, "threat": 0.05, "insult": 0.1, "identity_hate": 0.05}


def generate(rows: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    labels = {name: rng.random(rows) < rate for name, rate in _RATES.items()}
    # severe_toxic only on toxic rows; insults and obscenity make toxic more likely.
    labels["toxic"] |= (labels["insult"] | labels["obscene"]) & (rng.random(rows) < 0.5)
    labels["severe_toxic"] = labels["toxic"] & (rng.random(rows) < 0.15)
    texts = []
    for i in range(rows):
        words = list(rng.choice(_NEUTRAL, size=rng.integers(6, 40)))
        for name in JIGSAW_LABELS:
            # Cues of an active label, plus an occasional stray cue so the task is not trivial.
            if labels[name][i] or rng.random() < 0.02:
                for _ in range(rng.integers(1, 3)):
                    words.insert(int(rng.integers(0, len(words) + 1)), str(rng.choice(_CUES[name])))
        texts.append(" ".join(words).capitalize() + ".")
    columns = {"id": [f"{seed:02d}{i:08x}" for i in range(rows)], "comment_text": texts}
    columns.update({name: labels[name].astype(np.int64) for name in JIGSAW_LABELS})
    return pa.table(columns)


def write_demo(out_dir: str, rows: int, seed: int = 0) -> dict[str, str]:
    """train.csv (labelled) and score.parquet (ids + text, a quarter the size) under out_dir."""
    os.makedirs(out_dir, exist_ok=True)
    train = generate(rows, seed)
    score = generate(max(1, rows // 4), seed + 1).select(["id", "comment_text"])
    paths = {"train": os.path.join(out_dir, "train.csv"),
             "score": os.path.join(out_dir, "score.parquet")}
    pacsv.write_csv(train, paths["train"])
    pq.write_table(score, paths["score"])
    return paths


def write_test(out_dir: str, rows: int, seed: int = 2, unscored_fraction: float = 0.3) -> dict:
    """Jigsaw's test layout: test.csv (id, comment_text) + test_labels.csv (id + 0/1 columns),
    where a share of the rows carry -1 in every label (Jigsaw: "not used for scoring")."""
    os.makedirs(out_dir, exist_ok=True)
    table = generate(rows, seed)
    unscored = np.random.default_rng(seed).random(rows) < unscored_fraction
    labels = {"id": table.column("id")}
    for name in JIGSAW_LABELS:
        labels[name] = np.where(unscored, -1, table.column(name).to_numpy())
    paths = {"test": os.path.join(out_dir, "test.csv"),
             "test_labels": os.path.join(out_dir, "test_labels.csv")}
    pacsv.write_csv(table.select(["id", "comment_text"]), paths["test"])
    pacsv.write_csv(pa.table(labels), paths["test_labels"])
    return {**paths, "num_unscored": int(unscored.sum())}
TABULAR_LABELS = tuple(f"label_{j}" for j in range(5))
TABULAR_FEATURES = tuple(f"f{j}" for j in range(12))
SEVERITY = ("none", "mild", "severe")


def generate_tabular(rows: int, seed: int = 0) -> pa.Table:
    """The multi-head tutorial's data: make_multilabel_classification, 12 features, 5 labels."""
    from sklearn.datasets import make_multilabel_classification

    x, y = make_multilabel_classification(n_samples=rows, n_features=len(TABULAR_FEATURES),
                                          n_classes=len(TABULAR_LABELS), n_labels=2,
                                          random_state=seed)
    columns = {"id": [f"t{seed:02d}{i:08x}" for i in range(rows)]}
    columns.update({f: x[:, j].astype(np.float32) for j, f in enumerate(TABULAR_FEATURES)})
    columns.update({n: y[:, j].astype(np.int64) for j, n in enumerate(TABULAR_LABELS)})
    return pa.table(columns)


def generate_severity(rows: int, seed: int = 0) -> pa.Table:
    """The Jigsaw-layout corpus with toxic/severe_toxic folded into one 3-valued `severity`
    label (none / mild / severe, written as names) beside the binary labels."""
    table = generate(rows, seed)
    toxic = table.column("toxic").to_numpy()
    severe = table.column("severe_toxic").to_numpy()
    severity = np.where(severe == 1, 2, toxic)
    keep = table.drop_columns(["toxic", "severe_toxic"])
    return keep.append_column("severity", pa.array([SEVERITY[v] for v in severity]))


_KINDS = {"text": generate, "tabular": generate_tabular, "severity": generate_severity}


def write_demo_kind(out_dir: str, kind: str, rows: int, seed: int = 0) -> dict[str, str]:
    """train.parquet (labelled) and score.parquet (no labels, a quarter the size) for `kind`
    (text: train.csv, the Jigsaw layout); `out_dir` may be an object-store URI."""
    if storage.is_uri(out_dir):
        with tempfile.TemporaryDirectory() as local:
            paths = write_demo_kind(local, kind, rows, seed)
            storage.upload_dir(local, out_dir)
        return {k: storage.join(out_dir, os.path.basename(p)) for k, p in paths.items()}
    if kind == "text":
        return write_demo(out_dir, rows, seed)
    os.makedirs(out_dir, exist_ok=True)
    make = _KINDS[kind]
    train, score = make(rows, seed), make(max(1, rows // 4), seed + 1)
    labels = TABULAR_LABELS if kind == "tabular" else (*JIGSAW_LABELS[2:], "severity")
    paths = {"train": os.path.join(out_dir, "train.parquet"),
             "score": os.path.join(out_dir, "score.parquet")}
    pq.write_table(train, paths["train"])
    pq.write_table(score.drop_columns([c for c in labels if c in score.column_names]),
                   paths["score"])
    return paths
