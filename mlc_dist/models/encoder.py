"""A Transformer encoder trained from scratch (model.kind: encoder), as a transformers model.

nn.TransformerEncoder over token + position embeddings, mean pooling over non-padding tokens, one
of our heads. Being a PreTrainedModel with its own registered config, it saves and loads with
save_pretrained/from_pretrained (safetensors) like any HF checkpoint, without trust_remote_code.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

from mlc_dist.models.heads import build_head, init_weights, mean_pool


class MlcEncoderConfig(PretrainedConfig):
    model_type = "mlc_encoder"

    def __init__(self, vocab_size: int = 8000, hidden_size: int = 128, num_layers: int = 2,
                 num_heads: int = 4, intermediate_size: int | None = None, dropout: float = 0.1,
                 max_position_embeddings: int = 512, head: str = "linear",
                 head_sizes: list[int] | None = None, pad_token_id: int = 0, **kwargs):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.intermediate_size = intermediate_size or 4 * hidden_size
        self.dropout = dropout
        self.max_position_embeddings = max_position_embeddings
        self.head = head
        self.head_sizes = list(head_sizes or [1])
        super().__init__(pad_token_id=pad_token_id, **kwargs)


class MlcEncoderForSequenceClassification(PreTrainedModel):
    config_class = MlcEncoderConfig
    base_model_prefix = "mlc_encoder"
    main_input_name = "input_ids"

    def __init__(self, config: MlcEncoderConfig):
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size,
                                  padding_idx=config.pad_token_id)
        self.positions = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.dropout = nn.Dropout(config.dropout)
        layer = nn.TransformerEncoderLayer(
            config.hidden_size, config.num_heads, config.intermediate_size, config.dropout,
            activation="gelu", batch_first=True, norm_first=True)
        # enable_nested_tensor=False: the nested fast path changes shapes at eval time.
        self.encoder = nn.TransformerEncoder(layer, config.num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.hidden_size)
        self.head = build_head(config.head, config.hidden_size, config.head_sizes)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        init_weights(module)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                **_unused) -> SequenceClassifierOutput:
        # token_type_ids and other tokenizer outputs are accepted and ignored.
        if attention_mask is None:
            positions = torch.arange(input_ids.shape[1], device=input_ids.device)[None]
        else:  # counted from each row's first token, so either padding side gives the same [B, T]
            positions = (attention_mask.long().cumsum(1) - 1).clamp(min=0)
        x = self.dropout(self.embed(input_ids) + self.positions(positions))
        padding = None if attention_mask is None else attention_mask == 0
        x = self.norm(self.encoder(x, src_key_padding_mask=padding))
        return SequenceClassifierOutput(logits=self.head(mean_pool(x, attention_mask)))


SEP_TOKEN = "[SEP]"  # the separator of the WordPiece tokenizers trained here


def train_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: str, max_length: int):
    """A lowercasing WordPiece tokenizer trained on `texts`, saved as a BertTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers.trainers import WordPieceTrainer
    from transformers import BertTokenizerFast

    special = ["[PAD]", "[UNK]", "[CLS]", SEP_TOKEN, "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(texts, WordPieceTrainer(vocab_size=vocab_size, special_tokens=special))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id(SEP_TOKEN)
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    wrapped = BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                                model_max_length=max_length)
    wrapped.save_pretrained(out_dir)
    return wrapped
