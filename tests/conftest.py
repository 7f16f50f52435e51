"""Shared fixtures: a tiny random-init BERT saved like a hub checkpoint, real data paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Ray Train's controller collects worker reports on each health check; poll often so a worker
# killed right after a checkpoint does not take that checkpoint's registration down with it.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MLC_DIST_SHARED_DATA", REPO.parent / "shared" / "data"))


def build_tiny_bert(directory: Path, **overrides) -> str:
    """A 2-layer, 32-wide BERT with MiniLM's real uncased WordPiece tokenizer, saved to disk."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from mlc_dist.config import DEFAULT_MODEL
    from mlc_dist.models import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(DEFAULT_MODEL))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=256,
                        **overrides)
    BertModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


def export_tiny_model(directory, tiny_bert: str, labels, text_column: str = "text",
                      max_length: int = 64, head: str = "linear") -> str:
    """An exported classifier (random head over the tiny BERT), as training would write it."""
    import torch
    from transformers import AutoTokenizer

    from mlc_dist.artifacts import ModelMeta, save_export
    from mlc_dist.config import ModelConfig
    from mlc_dist.models import build_model

    torch.manual_seed(0)
    save_export(str(directory), build_model(ModelConfig(name=tiny_bert, head=head), labels),
                AutoTokenizer.from_pretrained(tiny_bert),
                ModelMeta(labels, [0.5] * len(labels), text_column, None, max_length, tiny_bert,
                          head=head))
    return str(directory)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> str:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "goemotions" / "train.tsv").exists():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def ray_cluster():
    """One real local Ray cluster for the integration tests of a session."""
    import ray

    from mlc_dist.runtime import init_ray

    init_ray(min_cpus=2)
    yield ray
    ray.shutdown()
