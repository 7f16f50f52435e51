"""An MLP over numeric feature columns (model.kind: mlp), with the same heads as text models."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

from mlc_dist.models.heads import build_head, init_weights


class MlcMlpConfig(PretrainedConfig):
    model_type = "mlc_mlp"

    def __init__(self, num_features: int = 1, hidden_size: int = 64, num_layers: int = 2,
                 dropout: float = 0.1, head: str = "linear", head_sizes: list[int] | None = None,
                 **kwargs):
        self.num_features = num_features
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.dropout = dropout
        self.head = head
        self.head_sizes = list(head_sizes or [1])
        super().__init__(**kwargs)


class MlcMlpForSequenceClassification(PreTrainedModel):
    config_class = MlcMlpConfig
    base_model_prefix = "mlc_mlp"
    main_input_name = "features"

    def __init__(self, config: MlcMlpConfig):
        super().__init__(config)
        layers, width = [], config.num_features
        for _ in range(config.num_layers):
            layers += [nn.Linear(width, config.hidden_size), nn.ReLU(), nn.Dropout(config.dropout)]
            width = config.hidden_size
        # Batch-normalized input: raw feature scales (counts, amounts) differ by column.
        self.body = nn.Sequential(nn.BatchNorm1d(config.num_features), *layers)
        self.head = build_head(config.head, width, config.head_sizes)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        init_weights(module, std=module.in_features ** -0.5 if isinstance(module, nn.Linear)
                     else 0.02)

    def forward(self, features: torch.Tensor, **_unused) -> SequenceClassifierOutput:
        # Features arrive as fp32 (or float64) columns and the parameters may be 16-bit (DeepSpeed
        # bf16/fp16 casts the parameters but not BatchNorm's running statistics): normalize in
        # the statistics' dtype, then run the layers in their own.
        norm, layers = self.body[0], self.body[1:]
        stats = norm.running_mean.dtype
        x = F.batch_norm(features.to(stats), norm.running_mean, norm.running_var,
                         norm.weight.to(stats), norm.bias.to(stats), norm.training, norm.momentum,
                         norm.eps)
        if norm.training:
            norm.num_batches_tracked.add_(1)
        x = layers(x.to(layers[0].weight.dtype))
        return SequenceClassifierOutput(logits=self.head(x))
