"""The exported model folder: HF weights (safetensors) + tokenizer + `mlc_dist.json`.

Owns the on-disk format that training writes and scoring reads; no training or Ray here.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from mlc_dist import storage
from mlc_dist.labels import LabelSpace
from mlc_dist.models.heads import HEADS, HeadName
from mlc_dist.models.outputs import OutputSchema

META_FILE = "mlc_dist.json"
FORMAT_VERSION = 1


@dataclass
class ModelMeta:
    label_space: LabelSpace
    thresholds: list[float]
    text_column: str
    text_pair_column: str | None
    max_length: int
    base_model: str
    kind: str = "hf"  # model.kind: hf | encoder | mlp
    head: HeadName = "linear"
    feature_columns: list[str] | None = None  # tabular input (kind: mlp)
    # The text from several columns (data/textspec.py), resolved: its separator token spelled
    # out. text_column then names the composed column: this template.
    text_template: str | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.head not in HEADS:
            raise ValueError(f"{META_FILE}: unknown head {self.head!r}; expected one of "
                             f"{list(HEADS)}")

    def data_config(self, cfg):
        """A job's DataConfig reading this model's inputs: its text column(s), its text pair."""
        return cfg.model_copy(update={"text_column": self.text_column,
                                      "text_pair_column": self.text_pair_column,
                                      "text_template": self.text_template, "text_columns": None})

    @property
    def outputs(self) -> OutputSchema:
        """What the model's logits mean and which score_/pred_ columns they become."""
        return OutputSchema(self.label_space, self.head)

    @property
    def threshold_rules(self) -> dict | None:
        """How each stored threshold was chosen (metrics.Thresholds.meta()); None for exports
        made before thresholds had rules."""
        return self.extra if "threshold_rules" in self.extra else None

    def to_dict(self) -> dict:
        return {"format_version": FORMAT_VERSION, "labels": self.label_space.to_dict(),
                "thresholds": self.thresholds, "text_column": self.text_column,
                "text_pair_column": self.text_pair_column, "max_length": self.max_length,
                "base_model": self.base_model, "kind": self.kind, "head": self.head,
                "feature_columns": self.feature_columns, "text_template": self.text_template,
                **self.extra}

    @classmethod
    def from_dict(cls, d: dict) -> "ModelMeta":
        known = {"format_version", "labels", "thresholds", "text_column", "text_pair_column",
                 "max_length", "base_model", "kind", "head", "feature_columns", "text_template"}
        return cls(LabelSpace.from_dict(d["labels"]), [float(t) for t in d["thresholds"]],
                   d["text_column"], d.get("text_pair_column"), int(d["max_length"]),
                   d.get("base_model", ""), d.get("kind", "hf"), d.get("head", "linear"),
                   d.get("feature_columns"), d.get("text_template"),
                   {k: v for k, v in d.items() if k not in known})


def save_export(directory: str, model, tokenizer, meta: ModelMeta, state_dict=None) -> None:
    """`state_dict` replaces the module's own weights (sharded engines gather them first).
    A local folder; the listing of its files' hashes (storage.CONTENT_FILE) is written last."""
    os.makedirs(directory, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True, state_dict=state_dict)
    if tokenizer is not None:  # tabular models have none
        tokenizer.save_pretrained(directory)
    write_meta(directory, meta)


def write_meta(directory: str, meta: ModelMeta) -> None:
    """(Re)write a local export's metadata, and its content listing to match."""
    with open(os.path.join(directory, META_FILE), "w") as f:
        json.dump(meta.to_dict(), f, indent=2)
    with open(os.path.join(directory, storage.CONTENT_FILE), "w") as f:
        f.write(storage.content_listing(directory))


def read_meta(directory: str) -> ModelMeta:
    """The metadata of an export, local or on an object store."""
    path = storage.join(directory, META_FILE)
    if not storage.is_file(path):
        raise FileNotFoundError(f"{directory}: not an exported mlc-dist model (no {META_FILE})")
    return ModelMeta.from_dict(storage.read_json(path))


class ExportChanged(RuntimeError):
    """The export a scorer loaded is not the one the job identified (replaced meanwhile)."""


def verify_export(directory: str, expected_digest: str | None) -> str:
    """The export's local folder (its link resolved once), refused if it is not the export with
    `expected_digest` (storage.export_digest); None checks nothing."""
    directory = os.path.realpath(storage.local_copy(directory))
    if expected_digest is not None and storage.export_digest(directory) != expected_digest:
        raise ExportChanged(f"{directory}: the export differs from the one this job identified "
                            "(replaced during the run?); nothing was scored with it")
    return directory


def load_export(directory: str, trust_remote_code: bool = False,
                expected_digest: str | None = None):
    """(model in eval mode, tokenizer or None, meta) from an exported folder; safetensors.

    An object-store export is read from this machine's content-keyed copy (storage.local_copy); a
    local one through its link resolved once (storage.publish_dir swaps versions). With
    `expected_digest` (storage.export_digest), a different export is refused. Importing
    mlc_dist.models.build registers our own model classes with the Auto* classes.
    """
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import mlc_dist.models.build  # noqa: F401 - registers our classes with the Auto* classes

    directory = verify_export(directory, expected_digest)
    meta = read_meta(directory)
    model = AutoModelForSequenceClassification.from_pretrained(
        directory, trust_remote_code=trust_remote_code, use_safetensors=True,
        dtype=torch.float32)  # the scorer casts once for its precision
    has_tokenizer = os.path.isfile(os.path.join(directory, "tokenizer_config.json"))
    tokenizer = AutoTokenizer.from_pretrained(directory) if has_tokenizer else None
    return model.eval(), tokenizer, meta
