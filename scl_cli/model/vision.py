"""Vision encoder: a ViT in OpenAI CLIP's `visual` layout, extended to clips of frames and to the
two image corruptions SCL needs (patch dropping and mask-token replacement).

Parameter names follow CLIP (`conv1`, `class_embedding`, `positional_embedding`, `ln_pre`,
`ln_post`, blocks with `ln_1` / `attn.in_proj_weight` / `mlp.c_fc` ...), so a CLIP state dict maps
onto it by a prefix rename (`transformer.resblocks.` -> `blocks.`). With `stem = "conv"` a few
early convolutions (`stem.*`) come before `conv1`, which is then a 1x1 projection (no CLIP
counterpart); with the default `stem = "patch"` the key layout is CLIP's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from scl_cli.config.recipe import VisionConfig
from scl_cli.model.attention import PackedSelfAttention


@dataclass
class ImageEncoding:
    """Tokens of a batch of clips (an image is a clip of one frame).

    tokens: [B, T * (1 + n), width], frames concatenated, each frame = its class token then its n patches.
    """

    tokens: Tensor
    frames: int
    tokens_per_frame: int

    @property
    def per_frame(self) -> Tensor:
        """[B, T, 1 + n, width]."""
        return self.tokens.unflatten(1, (self.frames, self.tokens_per_frame))

    @property
    def cls_tokens(self) -> Tensor:
        """Class token of each frame: [B, T, width]."""
        return self.per_frame[:, :, 0]

    @property
    def global_feature(self) -> Tensor:
        """Clip feature, the mean of the frame class tokens: [B, width] (the class token when T = 1)."""
        return self.cls_tokens.mean(dim=1)


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the activation OpenAI CLIP was trained with (not exact GELU)."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualBlock(nn.Module):
    """Pre-norm CLIP block: x + attn(ln_1(x)), then x + mlp(ln_2(x)). [B, S, w] -> [B, S, w]."""

    def __init__(self, width: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.ln_1 = nn.LayerNorm(width)
        self.attn = PackedSelfAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential()
        # Named children (not indices) so keys read `mlp.c_fc.weight` as in CLIP.
        self.mlp.add_module("c_fc", nn.Linear(width, hidden))
        self.mlp.add_module("gelu", QuickGELU())
        self.mlp.add_module("c_proj", nn.Linear(hidden, width))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class ConvStem(nn.Sequential):
    """Early convolutions for small ViTs trained from scratch (Xiao et al. 2021, "Early Convolutions
    Help Transformers See Better"): log2(patch) stride-2 3x3 convolutions, each followed by GroupNorm
    and GELU, channels doubling up to `width`. [N, 3, H, W] -> [N, width, H / patch, W / patch].

    One-group GroupNorm (a LayerNorm over channels and positions) rather than the paper's
    BatchNorm: per-sample statistics keep one process and N processes numerically equal and
    train/eval identical. One group, not one per channel: normalising each channel over the image
    (instance norm) erases the relative strength of the colour channels, and a model trained so
    on `shapes` could not tell colours apart by ITC. A token still sees a few pixels of its
    neighbours (receptive field 2 * patch - 1), so a masked or dropped patch is not entirely hidden.
    """

    def __init__(self, width: int, patch: int) -> None:
        steps = patch.bit_length() - 1
        layers: list[nn.Module] = []
        channels_in = 3
        for k in range(steps):
            channels = max(8, width >> (steps - 1 - k))
            layers += [
                nn.Conv2d(channels_in, channels, kernel_size=3, stride=2, padding=1, bias=False),
                nn.GroupNorm(1, channels),
                nn.GELU(),
            ]
            channels_in = channels
        super().__init__(*layers)
        self.out_channels = channels_in


class VisionEncoder(nn.Module):
    """CLIP ViT over clips: images [B, T, 3, H, W] -> ImageEncoding with tokens [B, T * (1 + n), width]."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.config = cfg
        width, patch = cfg.width, cfg.patch_size
        self.grid = cfg.image_size // patch
        self.num_patches = self.grid**2
        if cfg.stem == "conv":
            self.stem = ConvStem(width, patch)
            self.conv1 = nn.Conv2d(self.stem.out_channels, width, kernel_size=1, bias=False)
        else:
            self.stem = None
            self.conv1 = nn.Conv2d(3, width, kernel_size=patch, stride=patch, bias=False)
        scale = width**-0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(1 + self.num_patches, width))
        # Zeros: a clip starts out seen as independent CLIP frames; T = 1 never uses it. From scratch,
        # zeros are a fixed point: a clip and its reversal get equal features, so no gradient tells them apart.
        temporal = torch.zeros(cfg.max_frames, width)
        if cfg.temporal_init == "normal":
            temporal = scale * torch.randn(cfg.max_frames, width)
        self.temporal_embedding = nn.Parameter(temporal)
        # Local SCL's mask token: normal(0, mask_token_std); the paper's code uses torch.randn (std 1).
        self.mask_token = nn.Parameter(cfg.mask_token_std * torch.randn(1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.blocks = nn.ModuleList(ResidualBlock(width, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.layers))
        self.ln_post = nn.LayerNorm(width)
        self.gradient_checkpointing: bool = False
        # Set for runs that mix image and clip steps (see `embed`).
        self.images_share_steps_with_clips: bool = False
        self._init_blocks()

    def _init_blocks(self) -> None:
        # CLIP's initialize_parameters: residual outputs scaled down with depth.
        width, layers = self.config.width, self.config.layers
        attn_std = width**-0.5
        proj_std = attn_std * (2 * layers) ** -0.5
        fc_std = (2 * width) ** -0.5
        for block in self.blocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
            for bias in (
                block.attn.in_proj_bias,
                block.attn.out_proj.bias,
                block.mlp.c_fc.bias,
                block.mlp.c_proj.bias,
            ):
                nn.init.zeros_(bias)

    @property
    def width(self) -> int:
        return self.config.width

    def forward(
        self, images: Tensor, keep_index: Tensor | None = None, token_mask: Tensor | None = None
    ) -> ImageEncoding:
        """Encode clips.

        images: [B, T, 3, H, W] with H = W = cfg.image_size and T <= cfg.max_frames.
        keep_index: LongTensor [B, K] or None. Patch indices (0 .. N-1) kept per clip, the same for
            every frame (MAE-style dropping for global SCL); the class tokens are always kept.
        token_mask: BoolTensor [B, N] (or [B, T, N]) or None. True patches are replaced by
            `mask_token` before the position embedding is added (local SCL).
        Returns tokens [B, T * (1 + n), width], n = K if keep_index is given, else N.
        """
        x = self.embed(images, token_mask)  # [B, T, 1 + N, w]
        if keep_index is not None:
            x = keep_patches(x, keep_index)
        batch, frames, per_frame, width = x.shape
        if self.config.temporal_attention:
            x = x.reshape(batch, frames * per_frame, width)
        else:
            x = x.reshape(batch * frames, per_frame, width)
        x = self.ln_pre(x)
        for block in self.blocks:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        x = self.ln_post(x)
        return ImageEncoding(x.reshape(batch, frames * per_frame, width), frames, per_frame)

    def embed(self, images: Tensor, token_mask: Tensor | None = None) -> Tensor:
        """Token embeddings before ln_pre: [B, T, 3, H, W] -> [B, T, 1 + N, w] (patch or mask token,
        class token, position and, for T > 1, temporal embedding)."""
        self._check_input(images)
        batch, frames = images.shape[:2]
        x = images.flatten(0, 1)
        if self.stem is not None:
            x = self.stem(x)
        x = self.conv1(x)  # [B*T, w, g, g]
        x = x.flatten(2).transpose(1, 2).unflatten(0, (batch, frames))  # [B, T, N, w]
        if token_mask is not None:
            if token_mask.dim() == 2:
                token_mask = token_mask[:, None, :]
            x = torch.where(token_mask[..., None], self.mask_token.to(x.dtype), x)
        cls = self.class_embedding.to(x.dtype).expand(batch, frames, 1, -1)
        x = torch.cat([cls, x], dim=2) + self.positional_embedding.to(x.dtype)
        if frames > 1:
            x = x + self.temporal_embedding[:frames, None, :].to(x.dtype)
        elif (
            self.images_share_steps_with_clips
            and self.temporal_embedding.requires_grad
            and torch.is_grad_enabled()
        ):
            # Image steps of a run that mixes images and clips: an exact zero that still gives the
            # temporal embedding a (zero) gradient, so DDP sees the same parameters used every step.
            x = x + 0.0 * self.temporal_embedding[0].to(x.dtype)
        return x

    def _check_input(self, images: Tensor) -> None:
        if images.dim() != 5 or images.shape[2] != 3:
            raise ValueError(f"expected images [B, T, 3, H, W], got shape {tuple(images.shape)}")
        size = self.config.image_size
        if images.shape[-2:] != (size, size):
            raise ValueError(
                f"images are {images.shape[-2]}x{images.shape[-1]} px but model.vision.image_size is {size}"
            )
        if images.shape[1] > self.config.max_frames:
            raise ValueError(
                f"clip has {images.shape[1]} frames but model.vision.max_frames is {self.config.max_frames}"
            )


def keep_patches(x: Tensor, keep_index: Tensor) -> Tensor:
    """Keep each frame's class token and the patches at keep_index.

    x [B, T, 1 + N, w], keep_index [B, K] -> [B, T, 1 + K, w]. A gather, so dropped patches get no gradient.
    """
    batch, frames, _, width = x.shape
    index = keep_index[:, None, :, None].expand(batch, frames, keep_index.shape[1], width)
    patches = torch.gather(x[:, :, 1:], dim=2, index=index)
    return torch.cat([x[:, :, :1], patches], dim=2)


def interpolate_positional_embedding(pos: Tensor, new_grid: int) -> Tensor:
    """Resize a CLIP position table to another patch grid (bicubic), keeping the class position.

    pos [1 + g*g, w] -> [1 + new_grid*new_grid, w]; returned unchanged when g == new_grid.
    """
    grid = math.isqrt(pos.shape[0] - 1)
    if grid * grid != pos.shape[0] - 1:
        raise ValueError(f"position table has {pos.shape[0] - 1} patch rows, not a square grid")
    if grid == new_grid:
        return pos
    patches = pos[1:].float().reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
    patches = F.interpolate(patches, size=(new_grid, new_grid), mode="bicubic", align_corners=False)
    patches = patches.permute(0, 2, 3, 1).reshape(new_grid * new_grid, -1).to(pos.dtype)
    return torch.cat([pos[:1], patches], dim=0)
