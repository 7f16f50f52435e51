"""The output schema of a head: logits -> probabilities -> the score_/pred_ columns it writes.

Training (evaluation), scoring and predict read a model's outputs through `OutputSchema` alone, so
none of them branches on the head. The loss lives in losses.py; metrics in metrics.py.
  binary heads (linear, multi_binary): logits [B, L], a sigmoid per label;
  multi_category: logits [B, sum K_i], a softmax per label block (K_i = 2 when undeclared).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from mlc_dist.labels import LabelSpace
from mlc_dist.models.heads import HEADS, HeadName, head_sizes

SCORE_PREFIX, PRED_PREFIX = "score_", "pred_"


@dataclass(frozen=True)
class OutputSchema:
    label_space: LabelSpace
    head: HeadName = "linear"
    sizes: list[int] = field(init=False)

    def __post_init__(self):
        if self.head not in HEADS:
            raise ValueError(f"unknown head {self.head!r}; expected one of {list(HEADS)}")
        object.__setattr__(self, "sizes", head_sizes(self.label_space, self.head))

    @property
    def names(self) -> tuple[str, ...]:
        return self.label_space.names

    @property
    def num_outputs(self) -> int:
        return sum(self.sizes)

    @property
    def is_binary(self) -> bool:
        """One sigmoid per label: probabilities [N, L] line up with the labels [N, L]."""
        return self.head != "multi_category"

    @property
    def offsets(self) -> np.ndarray:
        return np.cumsum([0, *self.sizes])

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        if self.is_binary:
            return torch.sigmoid(logits)
        return torch.cat([b.softmax(dim=1) for b in torch.split(logits, self.sizes, dim=1)], 1)

    def blocks(self, probs: np.ndarray):
        """(label index, name, [N, K_i] probabilities) per label of a multi-category head."""
        offsets = self.offsets
        for j, name in enumerate(self.names):
            yield j, name, probs[:, offsets[j]:offsets[j + 1]]

    def score_columns(self) -> list[str]:
        """The score_ column names, in the order `columns` writes them."""
        return [c for c in self.columns(np.zeros((1, self.num_outputs), np.float32),
                                        np.zeros(len(self.names), np.float32))
                if c.startswith(SCORE_PREFIX)]

    def columns(self, probs: np.ndarray, thresholds) -> dict[str, np.ndarray]:
        """Binary labels: score_<label> (float32) and pred_<label> (int8, probability >= its
        threshold). Multi-category labels: score_<label>_<category> per category and
        pred_<label> = the argmax category index."""
        thresholds = np.asarray(thresholds, dtype=np.float32)
        if self.is_binary:
            out = {f"{SCORE_PREFIX}{n}": probs[:, j].astype(np.float32)
                   for j, n in enumerate(self.names)}
            preds = (probs >= thresholds).astype(np.int8)
            out.update({f"{PRED_PREFIX}{n}": preds[:, j] for j, n in enumerate(self.names)})
            return out
        out = {}
        categories = self.label_space.categories
        for j, name, block in self.blocks(probs):
            if name in categories:
                for k, cat in enumerate(categories[name]):
                    out[f"{SCORE_PREFIX}{name}_{cat}"] = block[:, k].astype(np.float32)
                out[f"{PRED_PREFIX}{name}"] = block.argmax(1).astype(np.int8)
            else:
                out[f"{SCORE_PREFIX}{name}"] = block[:, 1].astype(np.float32)
                out[f"{PRED_PREFIX}{name}"] = (block[:, 1] >= thresholds[j]).astype(np.int8)
        return out
