"""A hub checkpoint stored in 16 bits loads as fp32 parameters (autocast or DeepSpeed do the low
precision; fp32 master weights are what the optimizer updates)."""

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertModel

from mlc_dist.config import DEFAULT_MODEL, ModelConfig
from mlc_dist.labels import LabelSpace
from mlc_dist.models import build_model, resolve_model_path


@pytest.fixture(scope="module")
def bf16_checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("bf16_bert")
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=64)
    BertModel(config).to(torch.bfloat16).save_pretrained(directory)
    AutoTokenizer.from_pretrained(resolve_model_path(DEFAULT_MODEL)).save_pretrained(directory)
    return str(directory)


@pytest.mark.parametrize("head,pooling", [("linear", "cls"), ("linear", "mean"),
                                          ("multi_binary", "cls")])
def test_a_16_bit_checkpoint_loads_as_fp32(bf16_checkpoint, head, pooling):
    model = build_model(ModelConfig(name=bf16_checkpoint, head=head, pooling=pooling),
                        LabelSpace.from_names(["a", "b", "c"]))
    dtypes = {p.dtype for p in model.parameters()}
    assert dtypes == {torch.float32}
