"""SCLModel: the unimodal encoders, the fusion encoder and the pre-training heads, as small
sync-free methods that a training step composes (one full ViT pass can serve ITC, ITM, MLM and SCL).

Top-level attribute names are the checkpoint contract; the published checkpoint maps onto them by
prefix (`vision_transformer.visual.` -> `vision.`, `text_transformer.` -> `text.`,
`cross_modal_text_layers.` -> `fusion.text_layers.`, `cl_temp` -> `itc_temperature`, ...).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scl_cli.config.recipe import ModelConfig
from scl_cli.errors import UsageError
from scl_cli.model.fusion import FusionEncoder, FusionOutput
from scl_cli.model.heads import ITCProjection, ITMHead, MLMHead, Pooler
from scl_cli.model.text import build_text_encoder, text_hidden_states
from scl_cli.model.vision import ImageEncoding, VisionEncoder

ParamGroup = Literal["encoder", "fusion", "head"]

TEXT_TYPE, IMAGE_TYPE, SECOND_IMAGE_TYPE = 0, 1, 2  # token types; the third: NLVR2's second image
# Fine-tuning heads (`model.task_heads` adds them): attribute, what it does, the recipe that trains it.
TASK_HEADS = {
    "vqa": ("vqa_head", "VQA", "recipes/finetune/vqa.toml"),
    "nlvr2": ("nlvr2_head", "NLVR2", "recipes/finetune/nlvr2.toml"),
    "rank": ("rank_head", "retrieval rank", "recipes/finetune/f30k.toml"),
}
_ENCODER_PREFIXES = ("vision.", "text.")
_FUSION_PREFIXES = (
    "fusion.",
    "text_transform.",
    "image_transform.",
    "token_type_embeddings.",
    "text_pooler.",
    "image_pooler.",
)


def init_bert_style(module: nn.Module) -> None:
    """BERT/METER initialisation for the layers trained from scratch: normal(0.02), zero bias, unit norm."""
    if isinstance(module, nn.Linear | nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    if isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def _unit(x: Tensor) -> Tensor:
    """Unit-norm rows in at least fp32, also under autocast: ITC compares them at temperature ~0.07
    (see objectives.contrastive), and CPU autocast would otherwise normalise in bf16."""
    return F.normalize(x.to(torch.promote_types(x.dtype, torch.float32)), dim=-1)


class SCLModel(nn.Module):
    """Vision-language model of SCL (CVPR 2023). Shapes: B batch, T frames, L text tokens,
    S image tokens (T * tokens per frame), Dt text width, D fusion width, V vocabulary."""

    def __init__(self, cfg: ModelConfig, vocab_size: int, pad_token_id: int) -> None:
        super().__init__()
        self.config = cfg
        self.vocab_size = vocab_size
        self.pad_token_id = pad_token_id
        width = cfg.fusion.width

        self.vision = VisionEncoder(cfg.vision)
        self.text = build_text_encoder(cfg.text, vocab_size, pad_token_id)
        self.text_transform = nn.Linear(cfg.text.width, width)
        self.image_transform = nn.Linear(cfg.vision.width, width)
        self.token_type_embeddings = nn.Embedding(2, width)
        self.fusion = FusionEncoder(cfg.fusion)
        self.text_pooler = Pooler(width)
        self.image_pooler = Pooler(width)
        self.itm_head = ITMHead(2 * width)
        self.mlm_head = MLMHead(width, vocab_size, cfg.fusion.layer_norm_eps)
        self.itc_text_proj = ITCProjection(width, cfg.itc_dim)
        self.itc_image_proj = ITCProjection(width, cfg.itc_dim)
        self.itc_temperature = nn.Parameter(torch.tensor(0.07))
        # What `from_recipe_model` loaded with model.init = "pretrained" (LoadReports; empty otherwise).
        self.init_reports: list = []

        # The paper's code leaves its ITC projections (vision_proj, language_proj) at PyTorch's
        # default init; model.itc_init = "pytorch" does the same.
        keep = ("vision", "text") + (("itc_text_proj", "itc_image_proj") if cfg.itc_init == "pytorch" else ())
        for name, child in self.named_children():
            if name not in keep:
                child.apply(init_bert_style)
        if cfg.tie_mlm_decoder:
            if cfg.text.width != width:
                raise UsageError(
                    f"model.tie_mlm_decoder needs model.text.width ({cfg.text.width}) == "
                    f"model.fusion.width ({width})"
                )
            self.mlm_head.tie_to(self.text.embeddings.word_embeddings)

    @classmethod
    def from_recipe_model(cls, cfg: ModelConfig, vocab_size: int, pad_token_id: int) -> SCLModel:
        """Build the model a recipe describes (the one entry point that knows about `model.init`).

        With `init = "pretrained"` the vision encoder is loaded from `model.vision.weights` and the
        text encoder from `model.text.weights`; what each load did is kept in `model.init_reports`.
        """
        model = cls(cfg, vocab_size, pad_token_id)
        if cfg.init == "pretrained":
            from scl_cli.model.weights import initialise_pretrained

            model.init_reports = initialise_pretrained(model, cfg)
        return model

    # ------------------------------------------------------------------ unimodal passes
    def encode_image(
        self, images: Tensor, keep_index: Tensor | None = None, token_mask: Tensor | None = None
    ) -> ImageEncoding:
        """images [B, T, 3, H, W] -> ImageEncoding (tokens [B, S, Dv]); see VisionEncoder.forward."""
        return self.vision(images, keep_index=keep_index, token_mask=token_mask)

    def encode_text(self, ids: Tensor, mask: Tensor) -> Tensor:
        """ids [B, L], mask [B, L] (1 = real) -> [B, L, Dt]."""
        return text_hidden_states(self.text, ids, mask)

    # ------------------------------------------------------------------ into the fusion space
    def token_type_embed(self, embeds: Tensor, type_id: int) -> Tensor:
        """embeds [B, N, D] + token-type row type_id (0 text, 1 image, 2 second image once NLVR2 adds it)."""
        return embeds + self.token_type_embeddings.weight[type_id].to(embeds.dtype)

    def embed_text(self, tokens: Tensor) -> Tensor:
        """Unimodal text tokens [B, L, Dt] -> fusion input [B, L, D]."""
        return self.token_type_embed(self.text_transform(tokens), TEXT_TYPE)

    def embed_image(self, enc: ImageEncoding, type_id: int = IMAGE_TYPE) -> Tensor:
        """Unimodal image tokens -> fusion input [B, S, D]."""
        return self.token_type_embed(self.image_transform(enc.tokens), type_id)

    def fuse(
        self, text_emb: Tensor, text_mask: Tensor, image_emb: Tensor, image_mask: Tensor | None = None
    ) -> FusionOutput:
        """text_emb [B, L, D], text_mask [B, L], image_emb [B, S, D], image_mask [B, S] or None."""
        return self.fusion(text_emb, text_mask, image_emb, image_mask)

    # ------------------------------------------------------------------ features and heads
    @staticmethod
    def image_cls(image_stream: Tensor, frames: int) -> Tensor:
        """Global feature of an image-token stream [B, S, D] of `frames` frames: the mean of the frame
        class tokens (the class token when frames = 1) -> [B, D]."""
        return image_stream.unflatten(1, (frames, -1))[:, :, 0].mean(dim=1)

    def pooled(self, out: FusionOutput, frames: int) -> Tensor:
        """cls_feats = concat(text pooler(first text token), image pooler(image global feature)): [B, 2D]."""
        text = self.text_pooler(out.text[:, 0])
        image = self.image_pooler(self.image_cls(out.image, frames))
        return torch.cat([text, image], dim=-1)

    def itc_embeddings(
        self, text_tokens: Tensor, text_mask: Tensor, image: ImageEncoding
    ) -> tuple[Tensor, Tensor]:
        """Unimodal text tokens [B, L, Dt] (mask [B, L]) and image encoding -> L2-normalised (t, v),
        each [B, itc_dim]."""
        return self.itc_text(text_tokens, text_mask), self.itc_image(image)

    def itc_text(self, text_tokens: Tensor, text_mask: Tensor) -> Tensor:
        """[B, L, Dt], mask [B, L] (1 = real) -> unit-norm [B, itc_dim] from the class token or the
        mean of the real tokens (`model.itc_text_pool`)."""
        if self.config.itc_text_pool == "mean":
            weights = text_mask.to(text_tokens.dtype)[..., None]
            pooled = (text_tokens * weights).sum(1) / weights.sum(1).clamp(min=1)
        else:
            pooled = text_tokens[:, 0]
        return _unit(self.itc_text_proj(self.text_transform(pooled)))

    def itc_image(self, image: ImageEncoding) -> Tensor:
        """Image encoding -> unit-norm [B, itc_dim] from the clip's global feature."""
        return _unit(self.itc_image_proj(self.image_transform(image.global_feature)))

    def itm_logits(self, pooled: Tensor) -> Tensor:
        """[B, 2D] -> [B, 2]."""
        return self.itm_head(pooled)

    def mlm_logits(self, text_stream: Tensor) -> Tensor:
        """Fused text stream [B, L, D] -> [B, L, V]."""
        return self.mlm_head(text_stream)

    # ------------------------------------------------------------------ task heads
    # The forward passes of the fine-tuning heads, shared by their training objectives and by
    # inference (`scl_cli.inference`). Inputs are fusion-space embeddings (`embed_text`,
    # `embed_image`) or image encodings; the heads themselves are added by `model.task_heads`.
    def has_head(self, name: str) -> bool:
        """Whether the fine-tuning head `name` ("vqa", "nlvr2", "rank") is present."""
        return getattr(self, TASK_HEADS[name][0], None) is not None

    def require_head(self, name: str) -> nn.Module:
        """The head `name`, or a `UsageError` saying how to get one."""
        attribute, label, recipe = TASK_HEADS[name]
        head = getattr(self, attribute, None)
        if head is None:
            raise UsageError(f"has no {label} head — fine-tune it first (scl finetune {recipe} --ckpt ...)")
        return head

    def match_scores(self, text_emb: Tensor, text_mask: Tensor, image_emb: Tensor, frames: int = 1) -> Tensor:
        """Fusion score of B (text, image) pairs, higher = better match: the rank head after
        retrieval fine-tuning, the ITM match logit otherwise (zero-shot). text_emb [B, L, D],
        text_mask [B, L], image_emb [B, S, D] (clips of `frames` frames) -> [B]."""
        pooled = self.pooled(self.fuse(text_emb, text_mask, image_emb), frames)
        head = getattr(self, "rank_head", None)
        return head(pooled).squeeze(-1) if head is not None else self.itm_logits(pooled)[:, 1]

    @property
    def match_scorer(self) -> str:
        """What `match_scores` uses: "rank head" or "ITM match logit"."""
        return "rank head" if getattr(self, "rank_head", None) is not None else "ITM match logit"

    def vqa_logits(
        self, text_emb: Tensor, text_mask: Tensor, image_emb: Tensor, question_image: Tensor | None = None,
        frames: int = 1,
    ) -> Tensor:  # fmt: skip
        """Answer logits [Q, A] of Q questions (text_emb [Q, L, D], text_mask [Q, L]) about B images
        (image_emb [B, S, D]); question q is about image question_image[q] (None: Q = B, in order)."""
        head = self.require_head("vqa")
        if question_image is not None:
            image_emb = image_emb.index_select(0, question_image)
        return head(self.pooled(self.fuse(text_emb, text_mask, image_emb), frames))

    def nlvr2_logits(
        self,
        text_emb: Tensor,
        text_mask: Tensor,
        first: ImageEncoding,
        second: ImageEncoding,
        frames: int = 1,
    ) -> Tensor:
        """[B, 2] logits (index 1 = true) of B statements (text_emb [B, L, D]) about image pairs; both
        pairs go through the fusion encoder in one call, the second image with token type 2."""
        head = self.require_head("nlvr2")
        images = torch.cat([self.embed_image(first), self.embed_image(second, SECOND_IMAGE_TYPE)])
        out = self.fuse(torch.cat([text_emb, text_emb]), text_mask.repeat(2, 1), images)
        left, right = self.pooled(out, frames).split(text_emb.shape[0])
        return head(torch.cat([left, right], dim=1))

    # ------------------------------------------------------------------ training utilities
    def param_group(self, name: str) -> ParamGroup:
        """Learning-rate group of a parameter name from named_parameters()."""
        if name.startswith(_ENCODER_PREFIXES):
            return "encoder"
        if name.startswith(_FUSION_PREFIXES):
            return "fusion"
        return "head"

    def set_gradient_checkpointing(self, on: bool) -> None:
        """Recompute activations of every ViT block, RoBERTa layer and fusion layer in backward."""
        self.vision.gradient_checkpointing = on
        self.fusion.gradient_checkpointing = on
        # transformers 5.2x renamed gradient_checkpointing_* to activation_checkpointing_*: take
        # the new name where it exists (the old one warns there), the old one on earlier releases.
        new_api = hasattr(self.text, "activation_checkpointing_enable")
        if on:
            enable = (
                self.text.activation_checkpointing_enable
                if new_api
                else self.text.gradient_checkpointing_enable
            )
            enable({"use_reentrant": False})
        else:
            (
                self.text.activation_checkpointing_disable
                if new_api
                else self.text.gradient_checkpointing_disable
            )()

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Parameter count (shared tensors counted once)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)
