"""Published SCL checkpoints: every official key maps, and our model computes what the official code does.

The key names and shapes come from `official_scl_keys.txt` (the published pre-training checkpoint).
The equality test shrinks them (768 -> 128 ...), fills random values, and compares our model loaded
from the converted weights with a forward pass written directly against the official layout.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from scl_cli.config.recipe import ModelConfig
from scl_cli.errors import CheckpointError
from scl_cli.io.checkpoints import load_model_weights
from scl_cli.model import SCLModel
from scl_cli.model.official import (
    OFFICIAL_PAD_ID,
    convert_official_state_dict,
    official_name,
    plan_official,
)

from ..conftest import ROOT

KEYS_FILE = next(
    (
        p
        for p in (
            ROOT / "tests" / "fixtures" / "official_scl_keys.txt",  # a copy kept with the tests
            ROOT.parent / "shared" / "official_scl_keys.txt",
        )
        if p.is_file()
    ),
    None,
)
pytestmark = pytest.mark.skipif(KEYS_FILE is None, reason="official_scl_keys.txt (shared/) not available")

VOCAB, PAD = 300, OFFICIAL_PAD_ID
# Paper size -> tiny: widths 768 -> 128 (2 heads of 64), 18x18 grid of 16 px -> 4x4 grid of 8 px.
TINY_DIMS = {768: 128, 3072: 512, 2304: 384, 1536: 256, 512: 32, 2048: 128, 50265: VOCAB, 325: 17, 16: 8}
TINY_DEPTH = {
    r"\.resblocks\.(\d+)\.": 2,
    r"text_transformer\.encoder\.layer\.(\d+)\.": 2,
    r"cross_modal_\w+_layers\.(\d+)\.": 1,
    r"decoder_blocks\.(\d+)\.": 1,
}
# transformers' RobertaConfig default, which the official fusion layers and MLM head use (ours too)
OFFICIAL_FUSION_EPS = 1e-12
SD = dict[str, Tensor]


def official_shapes() -> dict[str, tuple[int, ...]]:
    """Key -> shape of the published checkpoint, in file order."""
    shapes = {}
    for line in KEYS_FILE.read_text().splitlines():  # type: ignore[union-attr]
        if not line.strip() or line.startswith("#"):
            continue
        key, shape, _dtype = line.split("\t")
        shapes[key] = tuple(int(d) for d in re.findall(r"\d+", shape))
    return shapes


def tiny_official_state_dict(seed: int = 0) -> dict[str, Tensor]:
    """Exactly the official names (kept layers only), shrunk shapes, random values."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in official_shapes().items():
        if any((m := re.search(p, key)) and int(m.group(1)) >= keep for p, keep in TINY_DEPTH.items()):
            continue
        shape = tuple(TINY_DIMS.get(d, d) for d in shape)
        if not shape:
            state[key] = torch.tensor(0.07)
        elif re.search(r"(LayerNorm|ln_\w+|norm\w*|_proj\.1)\.weight$", key):
            state[key] = 1 + 0.1 * torch.randn(shape, generator=gen)
        elif len(shape) == 1:
            state[key] = 0.1 * torch.randn(shape, generator=gen)
        else:
            state[key] = torch.randn(shape, generator=gen) / math.sqrt(math.prod(shape[1:]))
    return state


# ----------------------------------------------------------------------------- names only, paper size
def test_every_published_key_maps_at_paper_size() -> None:
    shapes = {**official_shapes(), "text_transformer.embeddings.position_ids": (1, 514)}  # older transformers
    plan = plan_official(shapes, "published")
    report = plan.report
    assert set(report.mapped) | set(report.ignored) == set(shapes) and not report.heads
    reasons = ("MAE pixel decoder", "RoBERTa's own pooler", "buffer saved by older")
    assert all(r.startswith(reasons) for r in report.ignored.values())
    assert report.new == {"vision.temporal_embedding": "ours only (video frames); zeros"}
    cfg = report.config
    assert (cfg.vision.image_size, cfg.vision.patch_size, cfg.vision.width) == (288, 16, 768)
    assert (cfg.vision.layers, cfg.vision.heads, cfg.text.layers, cfg.text.heads) == (11, 12, 12, 12)
    assert (cfg.fusion.width, cfg.fusion.layers, cfg.fusion.heads, cfg.itc_dim) == (768, 6, 12, 512)
    assert report.vocab_size == 50265 and cfg.text.tokenizer == "FacebookAI/roberta-base"
    # the planned shapes are exactly those of the paper-size model (built without memory)
    with torch.device("meta"):
        model = SCLModel(cfg, 50265, PAD)
    assert plan.targets == {k: tuple(t.shape) for k, t in model.state_dict().items()}
    assert plan.targets["text.embeddings.position_embeddings.weight"] == (52, 768)  # 514 rows cut


def test_key_rules() -> None:
    assert official_name("vision_transformer.visual.transformer.resblocks.3.attn.in_proj_weight") == (
        "mapped",
        "vision.blocks.3.attn.in_proj_weight",
    )
    assert official_name("vision_transformer.visual.visual_mask_token") == ("mapped", "vision.mask_token")
    assert official_name("cl_temp") == ("mapped", "itc_temperature")
    assert official_name("vision_proj.3.weight") == ("mapped", "itc_image_proj.3.weight")
    assert official_name("rank_output.weight") == ("head", "rank_head.weight")
    assert official_name("vision_transformer.mask_token")[0] == "ignored"
    assert official_name("cl_temperature") == ("unmapped", None)


def test_unplaceable_and_unfitting_keys_are_errors_naming_them() -> None:
    shapes = official_shapes()
    with pytest.raises(CheckpointError, match=r"cannot place 2 key\(s\): \[vision_transformer_m\.x, foo\]"):
        plan_official({**shapes, "vision_transformer_m.x": (1,), "foo": (2,)})
    bad = {**shapes, "itm_score.fc.weight": (3, 1536)}
    with pytest.raises(CheckpointError, match=r"itm_score\.fc\.weight \[3, 1536\]"):
        plan_official(bad)
    lacking = {k: v for k, v in shapes.items() if not k.startswith("cross_modal_image_pooler.")}
    with pytest.raises(CheckpointError, match="lacks weights.*image_pooler.dense.weight"):
        plan_official(lacking)


# ----------------------------------------------------------------------------- the official computation
def _lin(x: Tensor, sd: dict[str, Tensor], p: str) -> Tensor:
    return F.linear(x, sd[p + ".weight"], sd.get(p + ".bias"))


def _ln(x: Tensor, sd: dict[str, Tensor], p: str, eps: float) -> Tensor:
    return F.layer_norm(x, x.shape[-1:], sd[p + ".weight"], sd[p + ".bias"], eps)


def _attend(q: Tensor, k: Tensor, v: Tensor, heads: int, additive_mask: Tensor | None) -> Tensor:
    b, lq, w = q.shape
    q, k, v = (t.reshape(b, -1, heads, w // heads).transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-1, -2) / math.sqrt(w // heads)
    if additive_mask is not None:
        scores = scores + additive_mask
    return (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, lq, w)


def _extended(mask: Tensor) -> Tensor:
    """transformers' get_extended_attention_mask: [B, L] -> additive [B, 1, 1, L]."""
    return (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min


def _clip_visual(sd: dict[str, Tensor], images: Tensor, heads: int) -> Tensor:
    """METER/SCL `VisualTransformer`: visual_embed, ln_pre, resblocks (packed in_proj, QuickGELU), ln_post."""
    p = "vision_transformer.visual."
    patch = sd[p + "conv1.weight"].shape[-1]
    x = F.conv2d(images, sd[p + "conv1.weight"], stride=patch).flatten(2).transpose(1, 2)
    cls = sd[p + "class_embedding"].expand(x.shape[0], 1, -1)
    x = _ln(torch.cat([cls, x], 1) + sd[p + "positional_embedding"], sd, p + "ln_pre", 1e-5)
    blocks = sorted({int(m.group(1)) for k in sd if (m := re.search(r"resblocks\.(\d+)\.", k))})
    for i in blocks:
        b = f"{p}transformer.resblocks.{i}."
        q, k, v = F.linear(
            _ln(x, sd, b + "ln_1", 1e-5), sd[b + "attn.in_proj_weight"], sd[b + "attn.in_proj_bias"]
        ).chunk(3, -1)
        x = x + _lin(_attend(q, k, v, heads, None), sd, b + "attn.out_proj")
        h = _lin(_ln(x, sd, b + "ln_2", 1e-5), sd, b + "mlp.c_fc")
        x = x + _lin(h * torch.sigmoid(1.702 * h), sd, b + "mlp.c_proj")
    return _ln(x, sd, p + "ln_post", 1e-5)


def _bert_attention(
    sd: SD, p: str, x: Tensor, context: Tensor, mask: Tensor | None, heads: int, eps: float
) -> Tensor:
    h = _attend(
        _lin(x, sd, p + "self.query"),
        _lin(context, sd, p + "self.key"),
        _lin(context, sd, p + "self.value"),
        heads,
        mask,
    )
    return _ln(_lin(h, sd, p + "output.dense") + x, sd, p + "output.LayerNorm", eps)


def _bert_ffn(sd: SD, p: str, x: Tensor, eps: float) -> Tensor:
    h = F.gelu(_lin(x, sd, p + "intermediate.dense"))
    return _ln(_lin(h, sd, p + "output.dense") + x, sd, p + "output.LayerNorm", eps)


def _roberta(sd: dict[str, Tensor], ids: Tensor, mask: Tensor, heads: int) -> Tensor:
    p = "text_transformer."
    not_pad = (ids != PAD).long()
    positions = torch.cumsum(not_pad, 1) * not_pad + PAD
    x = (
        sd[p + "embeddings.word_embeddings.weight"][ids]
        + sd[p + "embeddings.position_embeddings.weight"][positions]
    )
    x = _ln(x + sd[p + "embeddings.token_type_embeddings.weight"][0], sd, p + "embeddings.LayerNorm", 1e-5)
    layers = sorted({int(m.group(1)) for k in sd if (m := re.search(r"encoder\.layer\.(\d+)\.", k))})
    for i in layers:
        layer = f"{p}encoder.layer.{i}."
        x = _bert_ffn(
            sd, layer, _bert_attention(sd, layer + "attention.", x, x, _extended(mask), heads, 1e-5), 1e-5
        )
    return x


def _cross_layer(
    sd: SD, p: str, x: Tensor, x_mask: Tensor, y: Tensor, y_mask: Tensor, heads: int, eps: float
) -> Tensor:
    """METER's BertCrossLayer: post-LN self-attention, cross-attention to y, feed-forward."""
    h = _bert_attention(sd, p + "attention.", x, x, x_mask, heads, eps)
    h = _bert_attention(sd, p + "crossattention.", h, y, y_mask, heads, eps)
    return _bert_ffn(sd, p, h, eps)


def official_forward(
    sd: dict[str, Tensor], images: Tensor, ids: Tensor, mask: Tensor, heads: int
) -> dict[str, Tensor]:
    """SCLTransformer.infer + the ITM, MLM and ITC heads, written against the official names."""
    eps = OFFICIAL_FUSION_EPS
    text = _lin(_roberta(sd, ids, mask, heads), sd, "cross_modal_text_transform")
    image = _lin(_clip_visual(sd, images, heads), sd, "cross_modal_image_transform")

    def itc(p: str, x: Tensor) -> Tensor:
        h = F.gelu(F.layer_norm(_lin(x, sd, p + ".0"), x.shape[-1:], sd[p + ".1.weight"], sd[p + ".1.bias"]))
        return F.normalize(_lin(h, sd, p + ".3"), dim=-1)

    itc_text, itc_image = itc("language_proj", text[:, 0]), itc("vision_proj", image[:, 0])
    types = sd["token_type_embeddings.weight"]
    x, y = text + types[0], image + types[1]
    x_mask, y_mask = _extended(mask), _extended(torch.ones(y.shape[:2]))
    layers = sorted({int(m.group(1)) for k in sd if (m := re.match(r"cross_modal_text_layers\.(\d+)\.", k))})
    for i in layers:
        x, y = (
            _cross_layer(sd, f"cross_modal_text_layers.{i}.", x, x_mask, y, y_mask, heads, eps),
            _cross_layer(sd, f"cross_modal_image_layers.{i}.", y, y_mask, x, x_mask, heads, eps),
        )
    cls_feats = torch.cat(
        [
            torch.tanh(_lin(x[:, 0], sd, "cross_modal_text_pooler.dense")),
            torch.tanh(_lin(y[:, 0], sd, "cross_modal_image_pooler.dense")),
        ],
        dim=-1,
    )
    h = _ln(F.gelu(_lin(x, sd, "mlm_score.transform.dense")), sd, "mlm_score.transform.LayerNorm", eps)
    return {
        "text": x,
        "image": y,
        "cls_feats": cls_feats,
        "itm": _lin(cls_feats, sd, "itm_score.fc"),
        "mlm": h @ sd["mlm_score.decoder.weight"].t() + sd["mlm_score.bias"],
        "itc_text": itc_text,
        "itc_image": itc_image,
    }


def our_forward(model: SCLModel, images: Tensor, ids: Tensor, mask: Tensor) -> dict[str, Tensor]:
    enc = model.encode_image(images[:, None])
    text = model.encode_text(ids, mask)
    out = model.fuse(model.embed_text(text), mask, model.embed_image(enc))
    cls_feats = model.pooled(out, enc.frames)
    itc_text, itc_image = model.itc_embeddings(text, mask, enc)
    return {
        "text": out.text,
        "image": out.image,
        "cls_feats": cls_feats,
        "itm": model.itm_logits(cls_feats),
        "mlm": model.mlm_logits(out.text),
        "itc_text": itc_text,
        "itc_image": itc_image,
    }


@pytest.fixture(scope="module")
def converted() -> tuple[dict[str, Tensor], SCLModel]:
    official = tiny_official_state_dict()
    state, report = convert_official_state_dict(official, "tiny official")
    model = SCLModel(report.config, report.vocab_size, report.pad_token_id)
    load_model_weights(model, state, strict=True, source="converted")
    return official, model.eval()


def inputs() -> tuple[Tensor, Tensor, Tensor]:
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, 32, 32, generator=gen)
    ids = torch.randint(3, VOCAB, (2, 9), generator=gen)
    mask = torch.ones(2, 9, dtype=torch.long)
    ids[:, 0], ids[1, 6:], mask[1, 6:] = 0, PAD, 0
    return images, ids, mask


def test_converted_model_equals_the_official_computation(converted) -> None:
    official, model = converted
    assert model.config.vision.image_size == 32 and model.config.fusion.heads == 2
    images, ids, mask = inputs()
    with torch.no_grad():
        ours = our_forward(model, images, ids, mask)
    theirs = official_forward(official, images, ids, mask, heads=2)
    for name, expected in theirs.items():
        torch.testing.assert_close(
            ours[name], expected, rtol=1e-5, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}"
        )


def test_layernorm_eps_matches_the_published_model(converted) -> None:
    # The published fusion layers and MLM transform use eps 1e-12 (RobertaConfig's BERT default).
    _, model = converted
    norms = [m for name, m in model.named_modules() if isinstance(m, torch.nn.LayerNorm)
             and (name.startswith("fusion.") or name.startswith("mlm_head."))]  # fmt: skip
    assert norms and all(m.eps == OFFICIAL_FUSION_EPS for m in norms)


def test_module_docstring_states_the_eps_in_use(converted) -> None:
    # The docstring said "ours use 1e-5" long after the fusion layers had moved to 1e-12.
    import scl_cli.model.official as official_module

    _, model = converted
    used: dict[str, set[float]] = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.LayerNorm):
            used.setdefault(name.split(".")[0], set()).add(module.eps)
    doc = " ".join((official_module.__doc__ or "").split())
    fusion = re.search(r"MLM transform use eps (\S+) like the official ones", doc)
    others = re.search(r"RoBERTa, the CLIP ViT and the ITC projections use (\S+), as published", doc)
    assert fusion and others, doc
    assert used.pop("fusion") == used.pop("mlm_head") == {float(fusion.group(1))} == {OFFICIAL_FUSION_EPS}
    assert set(used) == {"vision", "text", "itc_text_proj", "itc_image_proj"}
    assert all(eps == {float(others.group(1))} for eps in used.values())


def test_finetuned_checkpoint_keeps_heads_and_fills_missing_objectives() -> None:
    official = {
        k: v
        for k, v in tiny_official_state_dict().items()
        if not k.startswith(("itm_score.", "mlm_score.", "vision_proj.", "language_proj.", "cl_temp"))
    }
    official.update(
        {
            "vqa_classifier.0.weight": torch.randn(256, 256),
            "vqa_classifier.0.bias": torch.randn(256),
            "vqa_classifier.1.weight": torch.ones(256),
            "vqa_classifier.1.bias": torch.zeros(256),
            "vqa_classifier.3.weight": torch.randn(10, 256),
            "vqa_classifier.3.bias": torch.randn(10),
        }
    )
    state, report = convert_official_state_dict(official, "tiny vqa")
    assert set(report.heads.values()) == {f"vqa_head.{i}.{p}" for i in (0, 1, 3) for p in ("weight", "bias")}
    torch.testing.assert_close(state["vqa_head.3.weight"], official["vqa_classifier.3.weight"])
    assert {k for k in report.new if k.startswith("itm_head.")} == {"itm_head.fc.weight", "itm_head.fc.bias"}
    assert state["itc_temperature"].item() == pytest.approx(0.07)
    model = SCLModel(report.config, report.vocab_size, report.pad_token_id)
    load_model_weights(model, {k: v for k, v in state.items() if not k.startswith("vqa_head.")}, strict=True)


def test_model_config_needs_no_recipe(converted) -> None:
    _, model = converted
    cfg: ModelConfig = model.config
    assert cfg.init == "random"  # rebuilding from a converted config never starts a download
    assert (cfg.vision.patch_size, cfg.vision.layers, cfg.text.layers, cfg.fusion.layers) == (8, 2, 2, 1)
    assert (cfg.text.vocab_size, cfg.text.max_len, cfg.itc_dim) == (VOCAB, 50, 32)
    assert isinstance(KEYS_FILE, Path)
