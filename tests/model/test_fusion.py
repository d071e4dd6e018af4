"""FusionEncoder: SDPA against naive attention, padding isolation, parallel update, checkpoint names."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from scl_cli.config.recipe import FusionConfig
from scl_cli.model.fusion import CrossLayer, FusionEncoder

# `cross_modal_text_layers.0.` entries of /work/shared/official_scl_keys.txt (published checkpoint).
OFFICIAL_LAYER_KEYS = {
    f"{block}.{leaf}"
    for block in ("attention.self.query", "attention.self.key", "attention.self.value",
                  "attention.output.dense", "attention.output.LayerNorm",
                  "crossattention.self.query", "crossattention.self.key", "crossattention.self.value",
                  "crossattention.output.dense", "crossattention.output.LayerNorm",
                  "intermediate.dense", "output.dense", "output.LayerNorm")
    for leaf in ("weight", "bias")
}  # fmt: skip


def tiny(layers: int = 2) -> FusionEncoder:
    torch.manual_seed(0)
    return FusionEncoder(FusionConfig(width=32, layers=layers, heads=4, dropout=0.1)).eval()


def naive_attention(attn, x: Tensor, context: Tensor, keep: Tensor | None) -> Tensor:
    """softmax(Q K^T / sqrt(d) + mask) V with heads merged; keep [B, Lk] (1 = attend)."""
    heads = attn.heads
    q, k, v = attn.query(x), attn.key(context), attn.value(context)
    q, k, v = (t.view(t.shape[0], t.shape[1], heads, -1).transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if keep is not None:
        scores = scores + (1.0 - keep[:, None, None, :].float()) * -1e9
    out = scores.softmax(-1) @ v
    return out.transpose(1, 2).flatten(2)


def naive_layer(
    layer: CrossLayer, x: Tensor, x_keep: Tensor | None, y: Tensor, y_keep: Tensor | None
) -> Tensor:
    a = layer.attention
    h = a.output.LayerNorm(x + a.output.dense(naive_attention(a.self, x, x, x_keep)))
    c = layer.crossattention
    h = c.output.LayerNorm(h + c.output.dense(naive_attention(c.self, h, y, y_keep)))
    ff = layer.output.dense(torch.nn.functional.gelu(layer.intermediate.dense(h)))
    return layer.output.LayerNorm(h + ff)


def inputs() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    text, image = torch.randn(3, 6, 32), torch.randn(3, 9, 32)
    text_mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 2 + [0] * 4])
    image_mask = torch.ones(3, 9, dtype=torch.long)
    image_mask[1, 7:] = 0
    return text, text_mask, image, image_mask


def test_layer_matches_naive_attention() -> None:
    enc = tiny(layers=1)
    text, text_mask, image, image_mask = inputs()
    with torch.no_grad():
        out = enc(text, text_mask, image, image_mask)
        ref_text = naive_layer(enc.text_layers[0], text, text_mask, image, image_mask)
        ref_image = naive_layer(enc.image_layers[0], image, image_mask, text, text_mask)
    torch.testing.assert_close(out.text, ref_text, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.image, ref_image, atol=1e-5, rtol=1e-5)


def test_streams_update_in_parallel() -> None:
    enc = tiny(layers=2)
    text, text_mask, image, _ = inputs()
    with torch.no_grad():
        out = enc(text, text_mask, image)
        t, i = text, image
        for tl, il in zip(enc.text_layers, enc.image_layers, strict=True):
            t, i = naive_layer(tl, t, text_mask, i, None), naive_layer(il, i, None, t, text_mask)
    torch.testing.assert_close(out.text, t, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.image, i, atol=1e-5, rtol=1e-5)


def test_padded_text_does_not_leak() -> None:
    enc = tiny(layers=2)
    text, text_mask, image, image_mask = inputs()
    noisy = torch.where(text_mask[..., None].bool(), text, torch.randn_like(text) * 10)
    with torch.no_grad():
        a = enc(text, text_mask, image, image_mask)
        b = enc(noisy, text_mask, image, image_mask)
    real = text_mask.bool()
    torch.testing.assert_close(a.image, b.image, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.text[real], b.text[real], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a.text[~real], b.text[~real])


def test_layer_keys_match_official_checkpoint() -> None:
    layer = CrossLayer(32, 4, 4.0, 0.1)
    assert set(layer.state_dict()) == OFFICIAL_LAYER_KEYS
    assert {k.split(".")[0] for k in tiny().state_dict()} == {"text_layers", "image_layers"}


def test_gradient_checkpointing_matches_in_training_mode() -> None:
    enc = tiny(layers=2).train()
    text, text_mask, image, image_mask = inputs()

    def grads() -> dict[str, Tensor]:
        enc.zero_grad(set_to_none=True)
        torch.manual_seed(1)  # same dropout masks in both runs; checkpoint replays the RNG state
        out = enc(text, text_mask, image, image_mask)
        (out.text.square().sum() + out.image.square().sum()).backward()
        return {n: p.grad.clone() for n, p in enc.named_parameters()}

    plain = grads()
    enc.gradient_checkpointing = True
    for name, grad in grads().items():
        torch.testing.assert_close(grad, plain[name])
