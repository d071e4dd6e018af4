"""Text encoder: a `transformers` RoBERTa, held directly by SCLModel as `text` so its state-dict keys
read `text.embeddings.*` / `text.encoder.layer.{i}.*`, a prefix away from the published checkpoint
(`text_transformer.*`) and from `FacebookAI/roberta-base`.
"""

from __future__ import annotations

from torch import Tensor
from transformers import RobertaConfig, RobertaModel

from scl_cli.config.recipe import TextConfig
from scl_cli.model.attention import padding_mask


def roberta_config(cfg: TextConfig, vocab_size: int, pad_token_id: int) -> RobertaConfig:
    """The RobertaConfig for a recipe's text table."""
    # RoBERTa numbers positions from pad_token_id + 1, so the table needs max_len + pad + 1 rows
    # (max_len + 2 for the usual pad id 1; more for tokenizers that put <pad> further up).
    positions = cfg.max_len + max(pad_token_id, 1) + 1
    return RobertaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.width,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        intermediate_size=int(cfg.mlp_ratio * cfg.width),
        max_position_embeddings=positions,
        type_vocab_size=1,
        pad_token_id=pad_token_id,
        layer_norm_eps=1e-5,
        use_cache=False,
        attn_implementation="sdpa",
    )


def build_text_encoder(cfg: TextConfig, vocab_size: int, pad_token_id: int) -> RobertaModel:
    """A randomly initialised RoBERTa without pooler (std 0.02, transformers' own init)."""
    return RobertaModel(roberta_config(cfg, vocab_size, pad_token_id), add_pooling_layer=False)


def text_hidden_states(model: RobertaModel, ids: Tensor, mask: Tensor) -> Tensor:
    """ids [B, L], mask [B, L] (1 = real token) -> last hidden state [B, L, width]."""
    # A ready 4D mask is used as-is by transformers; a 2D one would be inspected on the host
    # (`mask.all()`) to decide whether it can be skipped, a device sync on every step.
    return model(input_ids=ids, attention_mask=padding_mask(mask)).last_hidden_state
