"""VisionEncoder: CLIP equivalence, clips, patch dropping, mask token, position-table resizing."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from scl_cli.config.recipe import VisionConfig
from scl_cli.model.vision import VisionEncoder, interpolate_positional_embedding, keep_patches

GRID = 4  # 32 px / patch 8
N = GRID * GRID


def tiny(**overrides) -> VisionEncoder:
    torch.manual_seed(0)
    cfg = VisionConfig(image_size=32, patch_size=8, width=32, layers=2, heads=2, max_frames=4, **overrides)
    return VisionEncoder(cfg).eval()


def clip_reference(enc: VisionEncoder, image: torch.Tensor) -> torch.Tensor:
    """OpenAI CLIP's VisionTransformer.forward (up to ln_post, all tokens), with nn.MultiheadAttention."""
    x = enc.conv1(image).flatten(2).permute(0, 2, 1)
    cls = enc.class_embedding + torch.zeros(x.shape[0], 1, x.shape[-1])
    x = torch.cat([cls, x], dim=1) + enc.positional_embedding
    x = enc.ln_pre(x).permute(1, 0, 2)  # CLIP runs the transformer sequence-first
    for block in enc.blocks:
        mha = nn.MultiheadAttention(enc.width, enc.config.heads)
        mha.load_state_dict(block.attn.state_dict())
        h = block.ln_1(x)
        x = x + mha(h, h, h, need_weights=False)[0]
        h = block.mlp.c_fc(block.ln_2(x))
        x = x + block.mlp.c_proj(h * torch.sigmoid(1.702 * h))
    return enc.ln_post(x.permute(1, 0, 2))


@pytest.mark.parametrize("temporal_attention", [False, True])
@pytest.mark.parametrize("frames", [1, 3])
def test_output_shapes(frames: int, temporal_attention: bool) -> None:
    enc = tiny(temporal_attention=temporal_attention)
    out = enc(torch.randn(2, frames, 3, 32, 32))
    assert out.tokens.shape == (2, frames * (1 + N), 32)
    assert (out.frames, out.tokens_per_frame) == (frames, 1 + N)
    assert out.cls_tokens.shape == (2, frames, 32)
    assert torch.equal(out.cls_tokens[:, -1], out.tokens[:, (frames - 1) * (1 + N)])
    assert torch.allclose(out.global_feature, out.cls_tokens.mean(1))
    dropped = enc(torch.randn(2, frames, 3, 32, 32), keep_index=torch.randint(0, N, (2, 5)))
    assert dropped.tokens.shape == (2, frames * 6, 32) and dropped.tokens_per_frame == 6


def test_single_frame_equals_clip() -> None:
    enc = tiny()
    image = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ours = enc(image[:, None]).tokens
        ref = clip_reference(enc, image)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_temporal_embedding_ignored_for_one_frame_used_for_clips() -> None:
    enc = tiny()
    images = torch.randn(1, 2, 3, 32, 32)
    with torch.no_grad():
        before_image, before_clip = enc(images[:, :1]).tokens, enc(images).tokens
        enc.temporal_embedding.normal_()
        assert torch.equal(enc(images[:, :1]).tokens, before_image)
        assert not torch.allclose(enc(images).tokens, before_clip)


def test_temporal_init_normal_tells_a_clip_from_its_reversal_from_the_start() -> None:
    # From zeros (the default, right for CLIP weights) a clip and its time reversal get the same
    # global feature, so a from-scratch model has no gradient that separates them (issue 15).
    clip = torch.randn(2, 4, 3, 32, 32)
    with torch.no_grad():
        zeros = tiny()
        assert torch.count_nonzero(zeros.temporal_embedding) == 0
        torch.testing.assert_close(zeros(clip).global_feature, zeros(clip.flip(1)).global_feature)
        normal = tiny(temporal_init="normal")
        assert 0.7 < float(normal.temporal_embedding.std()) * 32**0.5 < 1.3  # N(0, width^-0.5)
        assert not torch.allclose(normal(clip).global_feature, normal(clip.flip(1)).global_feature, atol=1e-4)
    with pytest.raises(ValueError, match="temporal_init"):
        VisionConfig(temporal_init="uniform")


def test_mask_token_replaces_patch_before_position_embedding() -> None:
    enc = tiny()
    masked = 5
    token_mask = torch.zeros(1, N, dtype=torch.bool)
    token_mask[0, masked] = True
    a = torch.randn(1, 1, 3, 32, 32)
    b = a.clone()
    row, col = divmod(masked, GRID)
    b[..., row * 8 : (row + 1) * 8, col * 8 : (col + 1) * 8] = torch.randn(3, 8, 8)
    with torch.no_grad():
        assert torch.equal(enc(a, token_mask=token_mask).tokens, enc(b, token_mask=token_mask).tokens)
        assert not torch.allclose(enc(a).tokens, enc(b).tokens)
        embedded = enc.embed(a, token_mask)
    torch.testing.assert_close(
        embedded[0, 0, 1 + masked], enc.mask_token[0] + enc.positional_embedding[1 + masked]
    )


def test_dropped_patches_get_no_gradient() -> None:
    enc = tiny()
    images = torch.randn(2, 2, 3, 32, 32, requires_grad=True)
    keep = torch.tensor([[0, 7, 9], [15, 1, 2]])
    enc(images, keep_index=keep).tokens.square().sum().backward()
    patch_grad = images.grad.abs().unflatten(3, (GRID, 8)).unflatten(5, (GRID, 8)).sum((2, 4, 6)).flatten(2)
    kept = torch.zeros(2, 1, N, dtype=torch.bool)
    kept[0, 0, keep[0]] = True
    kept[1, 0, keep[1]] = True
    kept = kept.expand(2, 2, N)
    assert torch.all(patch_grad[~kept] == 0)
    assert torch.all(patch_grad[kept] > 0)


def test_keep_index_is_the_same_for_every_frame() -> None:
    enc = tiny()  # temporal_embedding starts at zero, so each frame encodes as if alone
    clip = torch.randn(2, 3, 3, 32, 32)
    keep = torch.tensor([[3, 0, 12], [8, 9, 1]])
    with torch.no_grad():
        together = enc(clip, keep_index=keep).tokens.unflatten(1, (3, 4))
        for t in range(3):
            alone = enc(clip[:, t : t + 1], keep_index=keep).tokens
            torch.testing.assert_close(together[:, t], alone)
        full = enc.embed(clip)
        gathered = keep_patches(full, keep)
    for b in range(2):
        assert torch.equal(gathered[b, :, 1:], full[b, :, 1 + keep[b]])


def test_temporal_attention_mixes_frames() -> None:
    clip = torch.randn(1, 2, 3, 32, 32)
    with torch.no_grad():
        per_frame = tiny()(clip).tokens
        joint_enc = tiny(temporal_attention=True)
        joint = joint_enc(clip).tokens
        changed = clip.clone()
        changed[:, 1] = torch.randn(3, 32, 32)
        assert not torch.allclose(joint_enc(changed).tokens[:, : 1 + N], joint[:, : 1 + N])
    assert not torch.allclose(per_frame, joint)


def test_gradient_checkpointing_matches() -> None:
    enc = tiny()
    images = torch.randn(1, 2, 3, 32, 32)
    enc(images).tokens.square().sum().backward()
    grads = {n: p.grad.clone() for n, p in enc.named_parameters() if p.grad is not None}
    enc.zero_grad(set_to_none=True)
    enc.gradient_checkpointing = True
    enc(images).tokens.square().sum().backward()
    assert "blocks.0.attn.in_proj_weight" in grads
    for name, p in enc.named_parameters():
        if name in grads:
            torch.testing.assert_close(p.grad, grads[name])


def test_rejects_wrong_input() -> None:
    enc = tiny()
    with pytest.raises(ValueError, match="image_size"):
        enc(torch.randn(1, 1, 3, 48, 48))
    with pytest.raises(ValueError, match="max_frames"):
        enc(torch.randn(1, 5, 3, 32, 32))
    with pytest.raises(ValueError, match=r"\[B, T, 3, H, W\]"):
        enc(torch.randn(1, 3, 32, 32))


def test_interpolate_positional_embedding() -> None:
    pos = torch.randn(1 + 14 * 14, 16)
    assert interpolate_positional_embedding(pos, 14) is pos
    grown = interpolate_positional_embedding(pos, 18)
    assert grown.shape == (1 + 18 * 18, 16)
    assert torch.equal(grown[0], pos[0])
    # A constant grid stays constant under bicubic resampling.
    flat = torch.cat([torch.zeros(1, 4), torch.ones(9, 4)])
    torch.testing.assert_close(interpolate_positional_embedding(flat, 5)[1:], torch.ones(25, 4))
    with pytest.raises(ValueError, match="square"):
        interpolate_positional_embedding(torch.randn(11, 4), 3)


def test_patch_stem_keeps_the_clip_key_layout() -> None:
    keys = set(tiny().state_dict())
    assert not any(k.startswith("stem.") for k in keys)
    assert tiny().conv1.weight.shape == (32, 3, 8, 8)


def test_conv_stem_layout_shapes_and_corruptions() -> None:
    enc = tiny(stem="conv")
    state = enc.state_dict()
    # log2(8) = 3 stride-2 convolutions (each with GroupNorm), then conv1 as a 1x1 projection.
    convs = [k for k in state if k.startswith("stem.") and state[k].dim() == 4]
    assert [tuple(state[k].shape) for k in convs] == [(8, 3, 3, 3), (16, 8, 3, 3), (32, 16, 3, 3)]
    assert enc.conv1.weight.shape == (32, 32, 1, 1)
    images = torch.randn(2, 3, 3, 32, 32)
    with torch.no_grad():
        assert enc(images).tokens.shape == (2, 3 * (1 + N), 32)
        keep = torch.tensor([[0, 5], [3, 15]])
        assert enc(images, keep_index=keep).tokens.shape == (2, 3 * 3, 32)
        token_mask = torch.zeros(2, N, dtype=torch.bool)
        token_mask[:, 4] = True
        embedded = enc.embed(images, token_mask)
    torch.testing.assert_close(
        embedded[:, :, 1 + 4], (enc.mask_token[0] + enc.positional_embedding[1 + 4]).expand(2, 3, -1)
    )
    # Per-sample normalisation: a sample encodes the same alone as in a batch (DDP-safe, no running stats).
    with torch.no_grad():
        torch.testing.assert_close(enc(images[:1]).tokens, enc(images).tokens[:1], atol=1e-5, rtol=1e-5)
    assert not any("running" in k for k in state)


def test_conv_stem_needs_a_power_of_two_patch() -> None:
    with pytest.raises(ValueError, match="power-of-two"):
        VisionConfig(image_size=48, patch_size=6, stem="conv")
    assert VisionConfig(image_size=48, patch_size=16, stem="conv").stem == "conv"


def test_conv_stem_normalises_over_all_channels() -> None:
    # One group per layer: a per-channel (instance) norm rescales each channel on its own and loses
    # how strongly the colour channels respond relative to each other (issue 15).
    norms = [m for m in tiny(stem="conv").stem if isinstance(m, torch.nn.GroupNorm)]
    assert len(norms) == 3 and all(m.num_groups == 1 for m in norms)
