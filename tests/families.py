"""Tiny random-init models of each supported HF family, with tokenizers trained offline.

Each tokenizer is trained with the `tokenizers` library on generated sentences (WordPiece, BPE or
Unigram, as the family uses) and saved as a PreTrainedTokenizerFast with the family's special
tokens and input names, so no download is needed.
"""

from __future__ import annotations

from pathlib import Path

from mlc_dist.demo import generate

# family -> (tokenizer model, special tokens (pad, unk, cls, sep, mask), template, input names)
_TOKENIZERS = {
    "bert": ("wordpiece", ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"), "{cls} $A {sep}", True),
    "distilbert": ("wordpiece", ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"), "{cls} $A {sep}",
                   False),
    "roberta": ("bpe", ("<pad>", "<unk>", "<s>", "</s>", "<mask>"), "{cls} $A {sep}", False),
    "xlnet": ("unigram", ("<pad>", "<unk>", "<cls>", "<sep>", "<mask>"), "$A {sep} {cls}", True),
    "deberta-v2": ("unigram", ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"), "{cls} $A {sep}",
                   True),
}
FAMILIES = tuple(_TOKENIZERS)


def build_tokenizer(family: str, directory: Path, vocab_size: int = 400):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    kind, special, template, with_types = _TOKENIZERS[family]
    pad, unk, cls, sep, mask = special
    if kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token=unk))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=list(special))
    elif kind == "bpe":
        tok = Tokenizer(models.BPE(unk_token=unk))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(special),
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    else:
        tok = Tokenizer(models.Unigram())
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=list(special),
                                          unk_token=unk)
    texts = generate(300, seed=7).column("comment_text").to_pylist()
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=template.format(cls=cls, sep=sep),
        special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))])
    names = ["input_ids", "token_type_ids", "attention_mask"] if with_types else \
        ["input_ids", "attention_mask"]
    # XLNet's own tokenizer pads on the left (its classifier reads the last position).
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=pad, unk_token=unk,
                                      cls_token=cls, sep_token=sep, mask_token=mask,
                                      model_input_names=names,
                                      padding_side="left" if family == "xlnet" else "right")
    wrapped.save_pretrained(directory)
    return wrapped


def build_family(family: str, directory: Path, **overrides) -> str:
    """A 1-layer, 32-wide random-init checkpoint of `family` + its tokenizer, saved to disk;
    `overrides` are config keys (e.g. initializer_range)."""
    from transformers import AutoConfig, AutoModel

    tokenizer = build_tokenizer(family, directory)
    sizes = {"xlnet": dict(d_model=32, n_layer=1, n_head=2, d_inner=64),
             "distilbert": dict(dim=32, n_layers=1, n_heads=2, hidden_dim=64,
                                max_position_embeddings=256)}.get(
        family, dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=256))
    config = AutoConfig.for_model(family, vocab_size=len(tokenizer),
                                  pad_token_id=tokenizer.pad_token_id, **sizes, **overrides)
    AutoModel.from_config(config).save_pretrained(directory)
    return str(directory)


def _output_layer(model):
    """(weight, bias) of the layer producing the logits; weight rows index the outputs."""
    from torch import nn

    from mlc_dist.models.heads import MultiBinaryHead

    head = getattr(model, "head", None)
    if isinstance(head, MultiBinaryHead):
        return head.weight, head.bias
    if isinstance(head, nn.Module):
        return head.proj.weight, head.proj.bias
    layer = [m for m in model.modules() if isinstance(m, nn.Linear)
             and m.out_features == model.config.num_labels][-1]
    return layer.weight, layer.bias


def spread_outputs(model, inputs: dict, std: float = 3.0) -> None:
    """Rescale the output layer so each logit has mean 0 and `std` over `inputs`' rows: a random
    tiny model's probabilities (all near 0.5) then span most of (0, 1), so a test comparing
    scores can tell a wrong score from a right one."""
    import torch

    with torch.no_grad():
        logits = model.eval()(**inputs).logits.float()  # [N, num_outputs]
        scale = std / logits.std(0).clamp(min=1e-6)
        weight, bias = _output_layer(model)
        weight.mul_(scale.view(-1, *[1] * (weight.dim() - 1)).to(weight.dtype))
        bias.copy_(scale * (bias - logits.mean(0)))


def spread_bert_export(directory: Path, texts: list[str]):
    """(export dir, tokenized batch of `texts`, label space): a seeded, wide-initialised tiny BERT
    whose scores over `texts` are spread out (spread_outputs), exported like training does."""
    import numpy as np
    import torch
    from transformers import AutoTokenizer

    from mlc_dist.artifacts import ModelMeta, save_export
    from mlc_dist.config import ModelConfig
    from mlc_dist.data import Tokenize, pad_batch, padding_of
    from mlc_dist.labels import LabelSpace
    from mlc_dist.models import build_model

    from .conftest import build_tiny_bert

    # A wide init: rows' states differ enough that spreading the scores amplifies no rounding.
    torch.manual_seed(0)
    tiny_bert = build_tiny_bert(directory / "bert", initializer_range=0.2)
    space = LabelSpace.from_names(["a", "b", "c"])
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=tiny_bert), space)
    batch = Tokenize(tiny_bert, 64, keep=[])({"text": np.array(texts)})
    spread_outputs(model, {k: torch.from_numpy(v) for k, v in
                           pad_batch(dict(batch), *padding_of(tokenizer)).items()})
    save_export(str(directory / "model"), model, tokenizer,
                ModelMeta(space, [0.5] * 3, "text", None, 64, tiny_bert))
    return str(directory / "model"), batch, space
