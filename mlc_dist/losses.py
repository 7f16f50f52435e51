"""Loss functions on logits: BCEWithLogits with optional pos_weight for label imbalance."""

from __future__ import annotations

import torch
from torch import nn


def build_loss(pos_weight: list[float] | None = None) -> nn.Module:
    """Mean BCE over [B, num_labels]; pos_weight scales each label's positive term."""
    weight = torch.tensor(pos_weight, dtype=torch.float32) if pos_weight is not None else None
    return nn.BCEWithLogitsLoss(pos_weight=weight)
