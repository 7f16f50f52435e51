"""Any HF encoder checkpoint (BERT, DistilBERT, RoBERTa, XLNet, DeBERTa-v2, MiniLM, ...).

The plain case (head: linear, pooling: cls) is the family's own AutoModelForSequenceClassification.
Other heads or mean pooling wrap the family's AutoModel in MlcHFForSequenceClassification: the
encoder, our pooling and our head, saved as one registered transformers model.
"""

from __future__ import annotations

import inspect
import logging

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

from mlc_dist.models.heads import POOLING, build_head, init_weights

log = logging.getLogger(__name__)


class MlcHFConfig(PretrainedConfig):
    model_type = "mlc_hf"

    def __init__(self, encoder: dict | None = None, head: str = "multi_binary",
                 head_sizes: list[int] | None = None, pooling: str = "cls",
                 classifier_dropout: float = 0.1, **kwargs):
        self.encoder = dict(encoder or {})
        self.head = head
        self.head_sizes = list(head_sizes or [1])
        self.pooling = pooling
        self.classifier_dropout = classifier_dropout
        super().__init__(**kwargs)

    def encoder_config(self) -> PretrainedConfig:
        d = dict(self.encoder)
        return AutoConfig.for_model(d.pop("model_type"), **d)


class MlcHFForSequenceClassification(PreTrainedModel):
    config_class = MlcHFConfig
    base_model_prefix = "mlc_hf"

    def __init__(self, config: MlcHFConfig, encoder: nn.Module | None = None):
        super().__init__(config)
        self.encoder = encoder if encoder is not None else AutoModel.from_config(
            config.encoder_config())
        if getattr(self.encoder, "pooler", None) is not None:
            # We pool the token states ourselves; an unused pooler would leave DDP waiting for
            # gradients that never come (BERT/RoBERTa forwards skip a pooler set to None).
            self.encoder.pooler = None
        hidden = self.encoder.config.hidden_size if hasattr(self.encoder.config, "hidden_size") \
            else self.encoder.config.d_model
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.head = build_head(config.head, hidden, config.head_sizes)
        # pooling cls: the position the family's own classifier reads (XLNet summarises its last
        # token, where its <cls> is; config.summary_type), found through the attention mask.
        reads_last = getattr(self.encoder.config, "summary_type", None) == "last"
        self._pool = POOLING[config.pooling if config.pooling != "cls" else
                             "last" if reads_last else "first"]
        # Families differ in what forward takes (DistilBERT has no token_type_ids): pass only those.
        self._accepts = set(inspect.signature(self.encoder.forward).parameters)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        # The encoder initializes its own modules; only ours are initialized here.
        if not any(module is m for m in self.encoder.modules()):
            init_weights(module)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                **inputs) -> SequenceClassifierOutput:
        inputs = {k: v for k, v in inputs.items() if k in self._accepts}
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                              **inputs).last_hidden_state
        pooled = self._pool(hidden, attention_mask)
        return SequenceClassifierOutput(logits=self.head(self.dropout(pooled)))


class _NoLoadReport(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return " LOAD REPORT" not in record.getMessage()


def _from_pretrained(auto_class, path: str, **kwargs) -> nn.Module:
    """A pretrained encoder (+ a new classifier) without transformers' per-load key table.

    The table lists the new classifier as MISSING and pretraining heads as UNEXPECTED on every
    worker at every start, which is the expected case here; an encoder weight that did not load
    is not, and is warned about once, by name.
    """
    report = logging.getLogger("transformers.modeling_utils")
    quiet = _NoLoadReport()
    report.addFilter(quiet)
    try:
        # fp32 parameters whatever the checkpoint stores (transformers 5 keeps a 16-bit hub
        # checkpoint 16-bit): autocast or DeepSpeed run the low precision over fp32 masters.
        model, info = auto_class.from_pretrained(path, output_loading_info=True,
                                                 dtype=torch.float32, **kwargs)
    finally:
        report.removeFilter(quiet)
    prefix = f"{model.base_model_prefix}."
    encoder_missing = sorted(k for k in info["missing_keys"]
                             if k.startswith(prefix) or auto_class is AutoModel)
    if encoder_missing or info["mismatched_keys"]:
        log.warning("%s: encoder weights not in the checkpoint (randomly initialized): %s%s",
                    path, encoder_missing, f"; shape mismatches: {info['mismatched_keys']}"
                    if info["mismatched_keys"] else "")
    log.debug("%s: new %s; unused checkpoint weights %s", path, sorted(info["missing_keys"]),
              sorted(info["unexpected_keys"]))
    return model


def dropout_overrides(path: str, dropout: float | None, trust_remote_code: bool) -> dict:
    """Config keys setting every dropout probability the family names to `dropout`: BERT/RoBERTa/
    DeBERTa hidden_dropout_prob, attention_probs_dropout_prob, classifier/pooler_dropout;
    DistilBERT dropout, attention_dropout, seq_classif_dropout; XLNet dropout,
    summary_last_dropout; ... None: the checkpoint's own."""
    if dropout is None:
        return {}
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    # None-valued ones (classifier_dropout) default to the hidden dropout: set them all the same.
    return {k: dropout for k, v in config.to_dict().items() if "dropout" in k
            and (v is None or isinstance(v, (int, float)) and not isinstance(v, bool))}


def build(path: str, names: list[str], head: str, sizes: list[int], pooling: str,
          trust_remote_code: bool, dropout: float | None = None) -> nn.Module:
    from transformers import AutoModelForSequenceClassification

    labels = {"id2label": dict(enumerate(names)), "label2id": {n: i for i, n in enumerate(names)}}
    overrides = dropout_overrides(path, dropout, trust_remote_code)
    if head == "linear" and pooling == "cls":
        return _from_pretrained(AutoModelForSequenceClassification, path, num_labels=len(names),
                                problem_type="multi_label_classification",
                                trust_remote_code=trust_remote_code, **labels, **overrides)
    encoder = _from_pretrained(AutoModel, path, trust_remote_code=trust_remote_code, **overrides)
    config = MlcHFConfig(encoder=encoder.config.to_dict(), head=head, head_sizes=sizes,
                         pooling=pooling, classifier_dropout=0.1 if dropout is None else dropout,
                         **labels)
    return MlcHFForSequenceClassification(config, encoder=encoder)
