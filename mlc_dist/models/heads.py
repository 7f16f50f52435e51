"""Classification heads and pooling shared by every model kind: pooled [B, H] -> logits.

A head returns one flat logits tensor [B, num_outputs]; how it is split per label is described by
`head_sizes` (one entry per label), which the output schema (outputs.py) and the loss read.
"""

from __future__ import annotations

import torch
from typing import Literal, get_args

from torch import nn

from mlc_dist.labels import LabelSpace

HeadName = Literal["linear", "multi_binary", "multi_category"]
HEADS: tuple[str, ...] = get_args(HeadName)


def head_sizes(label_space: LabelSpace, head: str) -> list[int]:
    """Outputs per label: 1 logit for binary heads, K_i classes (2 when undeclared) otherwise."""
    if head == "multi_category":
        return [len(label_space.categories.get(n, ())) or 2 for n in label_space.names]
    return [1] * len(label_space)


class LinearHead(nn.Module):
    """One fused layer Linear(H, sum of sizes): a logit per binary label, or for multi-category
    labels a block of K_i logits per label (a block of rows is exactly a per-label Linear(H, K_i);
    the softmax is taken per block by the output schema)."""

    def __init__(self, hidden_size: int, sizes: list[int]):
        super().__init__()
        self.proj = nn.Linear(hidden_size, sum(sizes))

    @property
    def bias(self) -> torch.Tensor:
        return self.proj.bias

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.proj(pooled)


class MultiBinaryHead(nn.Module):
    """One independent (H -> 1) head per label, all computed in one batched matmul.

    Same function as a ModuleList of nn.Linear(H, 1) looped over labels, without the loop.
    """

    def __init__(self, hidden_size: int, sizes: list[int]):
        super().__init__()
        num = len(sizes)
        bound = hidden_size ** -0.5  # nn.Linear's default init range
        self.weight = nn.Parameter(torch.empty(num, hidden_size, 1).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(num).uniform_(-bound, bound))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bh,lho->bl", pooled, self.weight) + self.bias


_HEAD_CLASSES = {"linear": LinearHead, "multi_binary": MultiBinaryHead,
                 "multi_category": LinearHead}


def build_head(head: str, hidden_size: int, sizes: list[int]) -> nn.Module:
    return _HEAD_CLASSES[head](hidden_size, sizes)


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over non-padding positions only: [B, T, H], [B, T] -> [B, H]."""
    if attention_mask is None:
        return hidden.mean(dim=1)
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def _token(hidden: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), index]  # [B, H]


def first_token_pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """The first non-padding position ([CLS] of BERT-likes), wherever the padding is."""
    if attention_mask is None:
        return hidden[:, 0]
    return _token(hidden, attention_mask.int().argmax(dim=1))  # argmax: the first 1


def last_token_pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """The last non-padding position (XLNet's <cls> ends the sequence), wherever the padding is."""
    if attention_mask is None:
        return hidden[:, -1]
    last = attention_mask.shape[1] - 1 - attention_mask.int().flip(1).argmax(dim=1)
    return _token(hidden, last)


POOLING = {"first": first_token_pool, "last": last_token_pool, "mean": mean_pool}


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """BERT-style init for the modules our PreTrainedModels own (transformers calls it)."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=std)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, MultiBinaryHead):
        nn.init.normal_(module.weight, std=std)
        nn.init.zeros_(module.bias)
