"""The training objective of a head: loss on logits, probabilities, metrics and score columns.

`build_objective(label_space, head, pos_weight)` returns one object the train loop, evaluation
and scoring call without knowing the head:
  binary heads (linear, multi_binary): logits [B, L], BCEWithLogits (+pos_weight), sigmoid;
  multi_category: logits [B, sum K_i], cross-entropy per label head (mean over heads), softmax
  per head. Labels are always [B, L] floats: 0/1, or the category index for multi-category.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mlc_dist import metrics
from mlc_dist.labels import LabelSpace


def build_loss(pos_weight: list[float] | None = None) -> nn.Module:
    """Mean BCE over [B, num_labels]; pos_weight scales each label's positive term."""
    weight = torch.tensor(pos_weight, dtype=torch.float32) if pos_weight is not None else None
    return nn.BCEWithLogitsLoss(pos_weight=weight)


def per_head_cross_entropy(logits: torch.Tensor, labels: torch.Tensor,
                           sizes: list[int]) -> torch.Tensor:
    """Mean over label heads of each head's mean cross-entropy; labels [B, L] category indices."""
    losses = [F.cross_entropy(block, labels[:, j].long())
              for j, block in enumerate(torch.split(logits, sizes, dim=1))]
    return torch.stack(losses).mean()


class BinaryObjective:
    def __init__(self, label_space: LabelSpace, pos_weight: list[float] | None = None):
        self.names = label_space.names
        self.num_outputs = len(label_space)
        self.pos_weight = pos_weight
        self._loss = build_loss(pos_weight)

    def prior_bias(self, positives: list[float], num_rows: int) -> list[float]:
        """The constant logits that minimize this loss: log(w * p / (1 - p)) per label.

        Starting the output layer there (rather than at 0, where every label is a coin flip)
        keeps the first steps from pushing the encoder into one constant, prior-predicting
        output for every text: with 28 rare labels that collapse is what lr 1e-4 did to MiniLM
        on GoEmotions (val AUC 0.59 at 200 steps; 0.84 with this start). Labels never positive
        get p = 0.5/n.
        """
        n = max(num_rows, 1)
        p = np.clip(np.asarray(positives, dtype=np.float64), 0.5, n - 0.5) / n
        w = np.asarray(self.pos_weight if self.pos_weight is not None else 1.0, dtype=np.float64)
        return np.log(w * p / (1 - p)).tolist()

    def to(self, device) -> "BinaryObjective":
        self._loss = self._loss.to(device)
        return self

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self._loss(logits, labels)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits)

    def summary(self, labels: np.ndarray, probs: np.ndarray, thresholds) -> dict:
        return metrics.summary(labels, probs, thresholds)

    def columns(self, probs: np.ndarray, thresholds) -> dict[str, np.ndarray]:
        """score_<label> (float32) and pred_<label> (int8, probability >= threshold)."""
        preds = metrics.predict(probs, np.asarray(thresholds, dtype=np.float32))
        out = {f"score_{n}": probs[:, j].astype(np.float32) for j, n in enumerate(self.names)}
        out.update({f"pred_{n}": preds[:, j] for j, n in enumerate(self.names)})
        return out


class CategoryObjective:
    """One softmax per label. Labels without declared categories are 2-class (0/1) heads."""

    def __init__(self, label_space: LabelSpace, sizes: list[int]):
        self.names = label_space.names
        self.categories = label_space.categories
        self.sizes = sizes
        self.num_outputs = sum(sizes)
        self.offsets = np.cumsum([0, *sizes])

    def to(self, device) -> "CategoryObjective":
        return self

    def prior_bias(self, positives: list[float], num_rows: int) -> None:
        return None  # class counts per head are not collected; softmax heads start uniform

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return per_head_cross_entropy(logits, labels, self.sizes)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.cat([b.softmax(dim=1) for b in torch.split(logits, self.sizes, dim=1)], 1)

    def _blocks(self, probs: np.ndarray):
        for j, name in enumerate(self.names):
            yield j, name, probs[:, self.offsets[j]:self.offsets[j + 1]]

    def summary(self, labels: np.ndarray, probs: np.ndarray, thresholds) -> dict:
        """Binary labels: the usual AUC/F1 on P(class 1). Multi-category labels: accuracy and
        macro-F1 of the argmax per label, averaged over those labels."""
        binary = [j for j, n, _ in self._blocks(probs) if n not in self.categories]
        out = {}
        if binary:
            p1 = np.stack([probs[:, self.offsets[j] + 1] for j in binary], axis=1)
            out.update(metrics.summary(labels[:, binary], p1, np.asarray(thresholds)[binary]))
        cats = [(labels[:, j].astype(int), block.argmax(1)) for j, n, block in self._blocks(probs)
                if n in self.categories]
        if cats:
            out.update(metrics.category_summary(cats))
        return out

    def columns(self, probs: np.ndarray, thresholds) -> dict[str, np.ndarray]:
        """Binary labels: score_/pred_ as for binary heads. Multi-category labels: one
        score_<label>_<category> per category and pred_<label> = the argmax category index."""
        out = {}
        for j, name, block in self._blocks(probs):
            if name in self.categories:
                for k, cat in enumerate(self.categories[name]):
                    out[f"score_{name}_{cat}"] = block[:, k].astype(np.float32)
                out[f"pred_{name}"] = block.argmax(1).astype(np.int8)
            else:
                out[f"score_{name}"] = block[:, 1].astype(np.float32)
                out[f"pred_{name}"] = (block[:, 1] >= thresholds[j]).astype(np.int8)
        return out


def build_objective(label_space: LabelSpace, head: str, pos_weight: list[float] | None = None):
    from mlc_dist.models.heads import head_sizes

    if head == "multi_category":
        return CategoryObjective(label_space, head_sizes(label_space, head))
    return BinaryObjective(label_space, pos_weight)
