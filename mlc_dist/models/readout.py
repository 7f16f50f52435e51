"""Scoring only: a classifier whose last encoder layer runs at the one position its head reads.

A head that reads one token (BERT's pooler, RoBERTa's and ELECTRA's classification heads, our
`cls` pooling on a right-padded family) uses the last layer's output at position 0 alone: the
rest of the last layer feeds nothing. That is one layer in six of MiniLM-L6's FLOPs, one in
twelve of BERT-base's. `first_token_model` returns a copy of the model whose last layer
computes position 0 only (`FirstTokenLayer`, from the layer's own weights and modules); the
other positions pass through unchanged and are never read.

Used to export the ONNX graph (scoring/onnx_backend.py), which is checked against the unchanged
model before use; never in training. A head that reads more (mean pooling, XLNet's last token)
or a layer not built like BERT's gets None: the whole model is exported.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

#: Families whose own ...ForSequenceClassification head reads position 0 only.
FIRST_TOKEN_HEADS = {"bert", "roberta", "xlm-roberta", "camembert", "electra"}


class FirstTokenLayer(nn.Module):
    """A BERT-style encoder layer computed at position 0 only: [CLS]'s query against every
    position, then the layer's attention output and feed-forward. Positions 1.. come back as
    they came in (stale: no head reads them).

    With one query the keys and values need not be computed either: per head,
    q.(W_k h_t + b_k) = (W_k^T q).h_t + q.b_k, whose last term is the same at every position
    (softmax ignores it), and sum_t p_t (W_v h_t + b_v) = W_v (sum_t p_t h_t) + b_v, as the
    p_t sum to 1. The whole layer costs about one position's projections.
    """

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                *args, **kwargs) -> torch.Tensor:
        attn = self.layer.attention.self
        batch, _, width = hidden_states.shape
        size = attn.attention_head_size
        heads = attn.query.out_features // size
        first = hidden_states[:, :1]
        # [heads, B, size]: [CLS]'s query per head
        query = attn.query(first).view(batch, heads, size).transpose(0, 1)
        w_key = attn.key.weight.view(heads, size, width)
        w_value = attn.value.weight.view(heads, size, width)
        # [B, heads, width] @ [B, width, T]: the query folded through W_k, against each position
        folded = torch.matmul(query, w_key).transpose(0, 1)
        scores = torch.matmul(folded, hidden_states.transpose(1, 2)) * attn.scaling
        if attention_mask is not None:  # [B, 1, queries, T] or [B, 1, 1, T]: [CLS]'s row
            row = attention_mask[:, 0, :1] if attention_mask.dim() == 4 \
                else attention_mask[:, None]
            scores = scores.masked_fill(~row, torch.finfo(scores.dtype).min) \
                if row.dtype == torch.bool else scores + row.to(scores.dtype)
        probs = torch.softmax(scores, dim=-1)  # [B, heads, T]
        mixed = torch.matmul(probs, hidden_states).transpose(0, 1)  # [heads, B, width]
        context = torch.matmul(mixed, w_value.transpose(1, 2)).transpose(0, 1)  # [B, heads, size]
        if attn.value.bias is not None:
            context = context + attn.value.bias.view(heads, size)
        out = self.layer.attention.output(context.reshape(batch, 1, heads * size), first)
        out = self.layer.feed_forward_chunk(out)
        return torch.cat([out, hidden_states[:, 1:]], dim=1)


def _bert_style(layer: nn.Module) -> bool:
    attn = getattr(getattr(layer, "attention", None), "self", None)
    return (attn is not None and hasattr(layer.attention, "output")
            and hasattr(layer, "feed_forward_chunk")
            and all(isinstance(getattr(attn, a, None), nn.Linear)
                    for a in ("query", "key", "value"))
            and hasattr(attn, "attention_head_size") and hasattr(attn, "scaling")
            and getattr(attn, "position_embedding_type", "absolute") == "absolute"
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
