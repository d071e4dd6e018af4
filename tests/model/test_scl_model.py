"""SCLModel: method shapes, pooling, ITC, parameter groups, checkpoint prefixes, paper size on meta."""

from __future__ import annotations

import pytest
import torch

from scl_cli.config.recipe import FusionConfig, ModelConfig, TextConfig, VisionConfig
from scl_cli.errors import UsageError
from scl_cli.model import FusionOutput, ImageEncoding, SCLModel

VOCAB, PAD = 100, 1
TOP_LEVEL = {
    "vision", "text", "text_transform", "image_transform", "token_type_embeddings", "fusion",
    "text_pooler", "image_pooler", "itm_head", "mlm_head", "itc_text_proj", "itc_image_proj",
    "itc_temperature",
}  # fmt: skip


def tiny_config(**overrides) -> ModelConfig:
    fields = dict(
        init="random",
        vision=VisionConfig(image_size=32, patch_size=8, width=32, layers=2, heads=2, max_frames=4),
        text=TextConfig(width=32, layers=2, heads=2, max_len=12),
        fusion=FusionConfig(width=24, layers=2, heads=2),
        itc_dim=16,
    )
    return ModelConfig(**{**fields, **overrides})


@pytest.fixture(scope="module")
def model() -> SCLModel:
    torch.manual_seed(0)
    return SCLModel.from_recipe_model(tiny_config(), VOCAB, PAD).eval()


def batch(frames: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ids = torch.randint(3, VOCAB, (2, 8))
    mask = torch.ones(2, 8, dtype=torch.long)
    ids[1, 5:], mask[1, 5:] = PAD, 0
    return torch.randn(2, frames, 3, 32, 32), ids, mask


@pytest.mark.parametrize("frames", [1, 3])
def test_method_shapes(model: SCLModel, frames: int) -> None:
    images, ids, mask = batch(frames)
    with torch.no_grad():
        enc = model.encode_image(images)
        text = model.encode_text(ids, mask)
        text_emb, image_emb = model.embed_text(text), model.embed_image(enc)
        out = model.fuse(text_emb, mask, image_emb)
        pooled = model.pooled(out, enc.frames)
        t, v = model.itc_embeddings(text, mask, enc)
        dropped = model.encode_image(images, keep_index=torch.tensor([[0, 3], [5, 15]]))
        masked = model.encode_image(images, token_mask=torch.rand(2, 16) < 0.3)
    s = frames * 17
    assert isinstance(enc, ImageEncoding) and enc.tokens.shape == (2, s, 32)
    assert text.shape == (2, 8, 32)
    assert text_emb.shape == (2, 8, 24) and image_emb.shape == (2, s, 24)
    assert isinstance(out, FusionOutput) and out.text.shape == (2, 8, 24) and out.image.shape == (2, s, 24)
    assert pooled.shape == (2, 48)
    assert model.itm_logits(pooled).shape == (2, 2)
    assert model.mlm_logits(out.text).shape == (2, 8, VOCAB)
    assert t.shape == v.shape == (2, 16)
    assert dropped.tokens.shape == (2, frames * 3, 32) and masked.tokens.shape == enc.tokens.shape


def test_token_types(model: SCLModel) -> None:
    x = torch.randn(2, 5, 24)
    with torch.no_grad():
        torch.testing.assert_close(
            model.token_type_embed(x, 1) - x, model.token_type_embeddings.weight[1].expand(2, 5, 24)
        )
        tokens = torch.randn(2, 5, 32)
        expected = model.text_transform(tokens) + model.token_type_embeddings.weight[0]
        torch.testing.assert_close(model.embed_text(tokens), expected)


def test_pooled_averages_frame_class_tokens(model: SCLModel) -> None:
    text, image = torch.randn(2, 8, 24), torch.randn(2, 3 * 5, 24)
    with torch.no_grad():
        pooled = model.pooled(FusionOutput(text, image), frames=3)
        frame_cls = image[:, [0, 5, 10]].mean(1)
        torch.testing.assert_close(pooled[:, 24:], model.image_pooler(frame_cls))
        torch.testing.assert_close(pooled[:, :24], model.text_pooler(text[:, 0]))
        single = model.pooled(FusionOutput(text, image[:, :5]), frames=1)
        torch.testing.assert_close(single[:, 24:], model.image_pooler(image[:, 0]))


def test_itc_embeddings_unit_norm_and_use_mean_frame_class(model: SCLModel) -> None:
    text = torch.randn(2, 8, 32)
    clip = ImageEncoding(torch.randn(2, 2 * 17, 32), frames=2, tokens_per_frame=17)
    with torch.no_grad():
        t, v = model.itc_embeddings(text, torch.ones(2, 8, dtype=torch.long), clip)
        expected = model.itc_image_proj(model.image_transform(clip.tokens[:, [0, 17]].mean(1)))
        expected_text = model.itc_text_proj(model.text_transform(text[:, 0]))
    torch.testing.assert_close(t.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(v.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(v, torch.nn.functional.normalize(expected, dim=-1))
    torch.testing.assert_close(t, torch.nn.functional.normalize(expected_text, dim=-1))


def test_itc_text_mean_pool_averages_real_tokens_only() -> None:
    torch.manual_seed(0)
    model = SCLModel(tiny_config(itc_text_pool="mean"), vocab_size=50, pad_token_id=1).eval()
    text = torch.randn(2, 6, 32)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]])
    padded = text.clone()
    padded[0, 3:] = 1e3  # what padding positions hold must not matter
    with torch.no_grad():
        t = model.itc_text(padded, mask)
        mean = torch.stack([text[0, :3].mean(0), text[1].mean(0)])
        expected = torch.nn.functional.normalize(model.itc_text_proj(model.text_transform(mean)), dim=-1)
    torch.testing.assert_close(t, expected)


def test_param_groups(model: SCLModel) -> None:
    groups = {name: model.param_group(name) for name, _ in model.named_parameters()}
    assert set(groups.values()) == {"encoder", "fusion", "head"}
    for name, group in groups.items():
        top = name.split(".")[0]
        if top in ("vision", "text"):
            assert group == "encoder", name
        elif top in ("fusion", "text_transform", "image_transform", "token_type_embeddings",
                     "text_pooler", "image_pooler"):  # fmt: skip
            assert group == "fusion", name
        else:
            assert group == "head", name
    assert groups["itc_temperature"] == "head"
    assert model.param_group("vqa_head.0.weight") == "head"


def test_state_dict_prefixes_and_temperature(model: SCLModel) -> None:
    assert {k.split(".")[0] for k in model.state_dict()} == TOP_LEVEL
    assert "text.embeddings.word_embeddings.weight" in model.state_dict()
    assert "text.encoder.layer.1.attention.self.query.weight" in model.state_dict()
    assert model.itc_temperature.shape == () and model.itc_temperature.item() == pytest.approx(0.07)
    assert (model.config, model.vocab_size, model.pad_token_id) == (tiny_config(), VOCAB, PAD)


def test_tied_mlm_decoder() -> None:
    cfg = tiny_config(tie_mlm_decoder=True, fusion=FusionConfig(width=32, layers=1, heads=2))
    tied = SCLModel(cfg, VOCAB, PAD)
    assert tied.mlm_head.decoder.weight is tied.text.embeddings.word_embeddings.weight
    untied = SCLModel(cfg.model_copy(update={"tie_mlm_decoder": False}), VOCAB, PAD)
    assert tied.num_parameters() == untied.num_parameters() - VOCAB * 32
    with pytest.raises(UsageError, match="tie_mlm_decoder"):
        SCLModel(tiny_config(tie_mlm_decoder=True), VOCAB, PAD)


def test_gradient_checkpointing_toggle(model: SCLModel) -> None:
    images, ids, mask = batch(1)
    model.set_gradient_checkpointing(True)
    try:
        model.train()
        text = model.encode_text(ids, mask)
        enc = model.encode_image(images)
        out = model.fuse(model.embed_text(text), mask, model.embed_image(enc))
        model.mlm_logits(out.text).square().mean().backward()
        assert model.vision.blocks[0].attn.in_proj_weight.grad is not None
        assert model.text.encoder.layer[0].attention.self.query.weight.grad is not None
    finally:
        model.set_gradient_checkpointing(False)
        model.zero_grad(set_to_none=True)
        model.eval()
    assert not model.vision.gradient_checkpointing and not model.fusion.gradient_checkpointing


def test_pretrained_init_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="model.init=random"):
        SCLModel.from_recipe_model(tiny_config(init="pretrained"), VOCAB, PAD)


def test_paper_size_builds_on_meta() -> None:
    with torch.device("meta"):
        model = SCLModel(ModelConfig(), vocab_size=50265, pad_token_id=1)
    assert next(model.parameters()).is_meta
    # The published checkpoint holds 359,871,580 weights outside its unused MAE decoder and text
    # pooler; ours has 462 fewer RoBERTa position rows (52 vs 514) and adds 8 temporal rows.
    assert model.num_parameters() == 359_871_580 - 462 * 768 + 8 * 768


def test_training_passes_need_no_host_sync() -> None:
    # Meta tensors hold no data, so anything that reads values on the host (.item(), .nonzero(),
    # boolean-mask indexing, `if mask.all()`) raises: a CPU-side stand-in for CUDA's sync debug mode.
    with torch.device("meta"):
        model = SCLModel(tiny_config(), VOCAB, PAD)
        images = torch.empty(2, 2, 3, 32, 32)
        ids, mask = torch.empty(2, 8, dtype=torch.long), torch.empty(2, 8, dtype=torch.long)
        keep, token_mask = torch.empty(2, 3, dtype=torch.long), torch.empty(2, 16, dtype=torch.bool)
    model.train()
    model.set_gradient_checkpointing(True)
    text = model.encode_text(ids, mask)
    dropped = model.encode_image(images, keep_index=keep)
    masked = model.encode_image(images, token_mask=token_mask)
    out = model.fuse(
        model.embed_text(text), mask, model.embed_image(masked), torch.empty(2, 34, device="meta")
    )
    t, v = model.itc_embeddings(text, mask, dropped)
    loss = model.itm_logits(model.pooled(out, 2)).sum() + model.mlm_logits(out.text).sum() + (t * v).sum()
    loss.backward()
    assert model.vision.mask_token.grad is not None


def test_mask_token_init_std_is_a_recipe_field() -> None:
    # The paper's code: `visual_mask_token = nn.Parameter(torch.randn(1, width))` (clip_model.py:79),
    # which the CLIP checkpoint does not hold: N(0, 1). scl's default: N(0, 0.02).
    for std in (1.0, 0.02):
        torch.manual_seed(0)
        cfg = tiny_config(
            vision=VisionConfig(
                image_size=16, patch_size=16, width=768, layers=1, heads=12, mask_token_std=std
            )
        )
        token = SCLModel(cfg, VOCAB, PAD).vision.mask_token.detach()
        assert token.shape == (1, 768)
        assert abs(token.mean().item()) < 4 * std / 768**0.5
        assert abs(token.std().item() / std - 1) < 0.08


def test_itc_projections_keep_pytorch_default_init_when_asked() -> None:
    # The paper's code builds vision_proj / language_proj (nn.Sequential of Linear, LayerNorm, GELU,
    # Linear) and never applies init_weights to them: nn.Linear's U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    # for weight and bias (std 1/sqrt(3 fan_in)). Every other new layer is BERT-style either way.
    width, out = 256, 128
    fusion = FusionConfig(width=width, layers=1, heads=2)
    for itc_init in ("pytorch", "bert"):
        torch.manual_seed(0)
        model = SCLModel(tiny_config(fusion=fusion, itc_dim=out, itc_init=itc_init), VOCAB, PAD)
        for proj in (model.itc_text_proj, model.itc_image_proj):
            for linear in (proj[0], proj[3]):
                w, b = linear.weight.detach(), linear.bias.detach()
                if itc_init == "pytorch":
                    bound = width**-0.5
                    assert w.abs().max() <= bound and b.abs().max() <= bound
                    assert abs(w.std().item() / (3 * width) ** -0.5 - 1) < 0.03
                    assert b.abs().max() > bound / 2  # drawn, not zero
                else:
                    assert abs(w.std().item() / 0.02 - 1) < 0.03 and torch.all(b == 0)
            assert torch.all(proj[1].weight == 1) and torch.all(proj[1].bias == 0)
        assert abs(model.itm_head.fc.weight.std().item() / 0.02 - 1) < 0.05  # still BERT-style
        assert torch.all(model.text_transform.bias == 0)
