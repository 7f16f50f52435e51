"""Scoring only: a classifier whose last encoder layer runs at the one position its head reads.

A head that reads one token (BERT's pooler, RoBERTa's and ELECTRA's classification heads, our
`cls` pooling on a right-padded family) uses the last layer's output at position 0 alone. The
last layer's keys and values still need every position, but its queries, attention output,
feed-forward and LayerNorm at the other positions feed nothing: about 14% of MiniLM-L6's
FLOPs, 7% of a 12-layer BERT's. `first_token_model` returns a copy of the model whose last
layer computes position 0 only, from the family's own modules and attention function; the other
positions pass through unchanged and are never read.

Used to export the ONNX graph (scoring/onnx_backend.py), which is checked against the unchanged
model before use; never in training. A head that reads more (mean pooling, XLNet's last token)
or a layer not built like BERT's gets None: the whole model is exported.
"""

from __future__ import annotations

import copy
import sys

import torch
from torch import nn

#: Families whose own ...ForSequenceClassification head reads position 0 only.
FIRST_TOKEN_HEADS = {"bert", "roberta", "xlm-roberta", "camembert", "electra"}


class FirstTokenLayer(nn.Module):
    """A BERT-style encoder layer computed at position 0 only: the query of [CLS] against the
    keys and values of every position, then the layer's attention output and feed-forward.
    Positions 1.. come back as they came in (stale: no head reads them)."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                *args, **kwargs) -> torch.Tensor:
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        attn = self.layer.attention.self
        batch, length, _ = hidden_states.shape
        first = hidden_states[:, :1]

        def heads(x: torch.Tensor, rows: int) -> torch.Tensor:  # [B, heads, rows, head_size]
            return x.view(batch, rows, -1, attn.attention_head_size).transpose(1, 2)

        query = heads(attn.query(first), 1)
        key, value = heads(attn.key(hidden_states), length), heads(attn.value(hidden_states),
                                                                  length)
        if attention_mask is not None and attention_mask.dim() == 4 and attention_mask.shape[2] > 1:
            attention_mask = attention_mask[:, :, :1]  # [B, 1, queries, keys]: [CLS]'s row
        eager = sys.modules[type(attn).__module__].eager_attention_forward
        attend = ALL_ATTENTION_FUNCTIONS.get_interface(attn.config._attn_implementation, eager)
        context, _ = attend(attn, query, key, value, attention_mask, dropout=0.0,
                            scaling=attn.scaling)
        out = self.layer.attention.output(context.reshape(batch, 1, -1), first)
        out = self.layer.feed_forward_chunk(out)
        return torch.cat([out, hidden_states[:, 1:]], dim=1)


def _bert_style(layer: nn.Module) -> bool:
    attn = getattr(getattr(layer, "attention", None), "self", None)
    return (attn is not None and hasattr(layer.attention, "output")
            and hasattr(layer, "feed_forward_chunk")
            and all(hasattr(attn, a) for a in ("query", "key", "value", "attention_head_size",
                                               "scaling", "config"))
            and hasattr(sys.modules[type(attn).__module__], "eager_attention_forward")
            and not getattr(layer, "add_cross_attention", False))


def _encoder_and_reads_first(model: nn.Module, padding_side: str):
    """(the encoder holding `.encoder.layer`, True when the head reads position 0 only)."""
    from mlc_dist.models.heads import first_token_pool
    from mlc_dist.models.hf import MlcHFForSequenceClassification

    if isinstance(model, MlcHFForSequenceClassification):
        # first_token_pool reads the first non-padding position: 0 when padding is on the right.
        return model.encoder, model._pool is first_token_pool and padding_side == "right"
    config = getattr(model, "config", None)
    family = getattr(config, "model_type", None)
    reads_first = (family in FIRST_TOKEN_HEADS
                   and type(model).__name__.endswith("ForSequenceClassification"))
    return getattr(model, "base_model", None), reads_first


def first_token_model(model: nn.Module, padding_side: str = "right") -> nn.Module | None:
    """A copy of `model` (eval mode) whose last encoder layer runs at position 0 only, or None
    when the head reads more than position 0 or the layers are not BERT-style."""
    encoder, reads_first = _encoder_and_reads_first(model, padding_side)
    layers = getattr(getattr(encoder, "encoder", None), "layer", None)
    if not reads_first or not isinstance(layers, nn.ModuleList) or not len(layers) \
            or not _bert_style(layers[-1]):
        return None
    fast = copy.deepcopy(model).eval()
    fast_layers = _encoder_and_reads_first(fast, padding_side)[0].encoder.layer
    fast_layers[-1] = FirstTokenLayer(fast_layers[-1])
    return fast
