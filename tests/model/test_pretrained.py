"""Real initialisation from every source format, built tiny on the fly (no network, HF_HUB_OFFLINE=1):
an OpenAI CLIP state dict, a TorchScript archive, a timm-layout folder, a saved transformers RoBERTa."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import Tensor, nn
from transformers import RobertaConfig, RobertaModel

from scl_cli.config import load_recipe
from scl_cli.config.recipe import FusionConfig, ModelConfig, TextConfig, VisionConfig
from scl_cli.data.tokenizer import TextTokenizer, load_tokenizer, train_bpe_tokenizer
from scl_cli.engines.pretrain import build, pretrain
from scl_cli.errors import CheckpointError, UsageError
from scl_cli.model import SCLModel
from scl_cli.model.vision import VisionEncoder, interpolate_positional_embedding
from scl_cli.model.weights import load_text_weights, load_vision_weights

from ..conftest import RECIPES

WIDTH, SOURCE_GRID, SOURCE_BLOCKS = 32, 4, 3  # a "224 px, 12 block" CLIP in miniature: 4x4 grid, 3 blocks


def vision_config(image_size: int = 48, layers: int = 2) -> VisionConfig:
    return VisionConfig(
        image_size=image_size, patch_size=8, width=WIDTH, layers=layers, heads=2, max_frames=2
    )


def clip_state_dict(seed: int = 0) -> dict[str, Tensor]:
    """A whole OpenAI CLIP in OpenAI's names: `visual.*` (ViT) and the text tower scl ignores."""
    gen = torch.Generator().manual_seed(seed)

    def r(*shape: int) -> Tensor:
        return 0.1 * torch.randn(*shape, generator=gen)

    w = WIDTH
    sd = {
        "visual.conv1.weight": r(w, 3, 8, 8),
        "visual.class_embedding": r(w),
        "visual.positional_embedding": r(SOURCE_GRID**2 + 1, w),
        "visual.ln_pre.weight": 1 + r(w),
        "visual.ln_pre.bias": r(w),
        "visual.ln_post.weight": 1 + r(w),
        "visual.ln_post.bias": r(w),
        "visual.proj": r(w, 16),
    }
    for i in range(SOURCE_BLOCKS):
        b = f"visual.transformer.resblocks.{i}."
        sd |= {
            b + "ln_1.weight": 1 + r(w), b + "ln_1.bias": r(w),
            b + "attn.in_proj_weight": r(3 * w, w), b + "attn.in_proj_bias": r(3 * w),
            b + "attn.out_proj.weight": r(w, w), b + "attn.out_proj.bias": r(w),
            b + "ln_2.weight": 1 + r(w), b + "ln_2.bias": r(w),
            b + "mlp.c_fc.weight": r(4 * w, w), b + "mlp.c_fc.bias": r(4 * w),
            b + "mlp.c_proj.weight": r(w, 4 * w), b + "mlp.c_proj.bias": r(w),
        }  # fmt: skip
    sd |= {
        "positional_embedding": r(8, 16), "token_embedding.weight": r(50, 16),
        "transformer.resblocks.0.ln_1.weight": r(16), "transformer.resblocks.0.attn.in_proj_weight": r(48, 16),
        "ln_final.weight": r(16), "ln_final.bias": r(16), "text_projection": r(16, 16),
        "logit_scale": torch.tensor(4.6),
    }  # fmt: skip
    return sd


class ParamTree(nn.Module):
    """A module whose parameter names are exactly the keys of a state dict (for a TorchScript archive)."""

    def __init__(self, state: dict[str, Tensor]) -> None:
        super().__init__()
        for key, value in state.items():
            *path, name = key.split(".")
            module: nn.Module = self
            for part in path:
                if not hasattr(module, part):
                    module.add_module(part, nn.Module())
                module = getattr(module, part)
            module.register_parameter(name, nn.Parameter(value.clone()))
        # OpenAI's archives also hold these three (build_model deletes them).
        self.register_buffer("input_resolution", torch.tensor(32))
        self.register_buffer("context_length", torch.tensor(8))
        self.register_buffer("vocab_size", torch.tensor(50))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.logit_scale


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("clip") / "ViT-tiny.pt"
    torch.save(clip_state_dict(), path)
    return path


@pytest.fixture(scope="module")
def roberta_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`save_pretrained` of a tiny RoBERTa (pooler included) with its tokenizer.json."""
    folder = tmp_path_factory.mktemp("roberta")
    texts = [
        f"a {c} {s} is left of a {s2}"
        for c in ("red", "blue", "green")
        for s in ("cube", "ball")
        for s2 in ("cone", "ring")
    ]
    tokenizer = train_bpe_tokenizer(texts * 3, vocab_size=300)
    torch.manual_seed(0)
    config = RobertaConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=128, max_position_embeddings=40, type_vocab_size=1, pad_token_id=tokenizer.pad_id,
        layer_norm_eps=1e-5,
    )  # fmt: skip
    RobertaModel(config).save_pretrained(folder)
    tokenizer.save(folder / "tokenizer.json")
    return folder


def tokenizer_of(folder: Path) -> TextTokenizer:
    return load_tokenizer(str(folder), Path("unused"), "unused")


# ----------------------------------------------------------------------------- vision
def test_openai_clip_state_dict(clip_file: Path) -> None:
    source = clip_state_dict()
    encoder = VisionEncoder(vision_config())
    report = load_vision_weights(encoder, str(clip_file))
    assert report.layout == "openai-clip"
    assert set(report.mapped) | set(report.ignored) == set(source)  # every key accounted for
    assert report.ignored["visual.proj"].startswith("CLIP's projection")
    assert report.ignored["logit_scale"].startswith("CLIP text tower")
    dropped = {k for k, why in report.ignored.items() if why.startswith("unused by design")}
    assert dropped == {k for k in source if k.startswith("visual.transformer.resblocks.2.")}
    assert set(report.new) == {"temporal_embedding", "mask_token"}
    assert "position grid 4x4 -> 6x6 (bicubic)" in report.notes
    torch.testing.assert_close(
        encoder.blocks[1].mlp.c_fc.weight, source["visual.transformer.resblocks.1.mlp.c_fc.weight"]
    )
    torch.testing.assert_close(
        encoder.positional_embedding,
        interpolate_positional_embedding(source["visual.positional_embedding"], 6),
    )
    assert torch.equal(encoder.positional_embedding[0], source["visual.positional_embedding"][0])


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_torchscript_archive_loads_like_the_state_dict(tmp_path: Path, clip_file: Path) -> None:
    archive = tmp_path / "ViT-tiny-jit.pt"
    torch.jit.script(ParamTree(clip_state_dict())).save(str(archive))
    from_archive, from_dict = VisionEncoder(vision_config()), VisionEncoder(vision_config())
    report = load_vision_weights(from_archive, str(archive))
    load_vision_weights(from_dict, str(clip_file))
    assert report.ignored["input_resolution"] == "CLIP archive metadata"
    for (name, a), (_, b) in zip(
        from_archive.state_dict().items(), from_dict.state_dict().items(), strict=True
    ):
        if name not in ("temporal_embedding", "mask_token"):
            assert torch.equal(a, b), name


def test_timm_layout_matches_timm_forward(tmp_path: Path) -> None:
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(
        img_size=32, patch_size=8, embed_dim=WIDTH, depth=2, num_heads=2, pre_norm=True, class_token=True,
        act_layer="quick_gelu", norm_layer=partial(nn.LayerNorm, eps=1e-5), num_classes=16, global_pool="token",
    ).eval()  # fmt: skip
    folder = tmp_path / "vit_tiny_clip.openai"  # a timm / HF-hub download folder
    folder.mkdir()
    save_file(vit.state_dict(), folder / "model.safetensors")

    encoder = VisionEncoder(vision_config(image_size=32)).eval()
    report = load_vision_weights(encoder, str(folder))
    assert report.layout == "timm" and not report.notes
    assert set(report.ignored) == {"head.weight", "head.bias"}
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(encoder(x[:, None]).tokens, vit.forward_features(x), rtol=1e-5, atol=1e-5)

    bigger = VisionEncoder(vision_config(image_size=48))
    assert "position grid 4x4 -> 6x6 (bicubic)" in load_vision_weights(bigger, str(folder)).notes
    assert bigger.positional_embedding.shape == (37, WIDTH)
    assert torch.equal(bigger.class_embedding, vit.cls_token.reshape(-1))


def test_vision_errors_name_the_problem(tmp_path: Path) -> None:
    encoder = VisionEncoder(vision_config())
    path = tmp_path / "clip.pt"
    torch.save({**clip_state_dict(), "visual.attnpool.weight": torch.zeros(2)}, path)
    with pytest.raises(
        CheckpointError, match=r"cannot place 1 vision key\(s\): \[visual\.attnpool\.weight\]"
    ):
        load_vision_weights(encoder, str(path))
    torch.save(clip_state_dict(), path)
    with pytest.raises(CheckpointError, match="has 3 ViT blocks but model.vision.layers = 4"):
        load_vision_weights(VisionEncoder(vision_config(layers=4)), str(path))
    wide = VisionEncoder(VisionConfig(image_size=32, patch_size=8, width=64, layers=2, heads=2))
    with pytest.raises(
        CheckpointError, match=r"shapes do not fit.*conv1\.weight \[32, 3, 8, 8\] vs \[64, 3, 8, 8\]"
    ):
        load_vision_weights(wide, str(path))
    with pytest.raises(UsageError, match="no such file or folder"):
        load_vision_weights(encoder, "./missing/ViT-B-16.pt")


class Payload:
    """Anything that is not a tensor or a plain container: loading it would mean arbitrary unpickling."""


def test_file_needing_arbitrary_unpickling_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "clip.pt"
    torch.save({"state_dict": clip_state_dict(), "extra": Payload()}, path)
    with pytest.raises(CheckpointError, match="needs arbitrary unpickling.*refuses"):
        load_vision_weights(VisionEncoder(vision_config()), str(path))


def test_hub_names_fail_offline_with_one_line() -> None:
    encoder = VisionEncoder(vision_config())
    with pytest.raises(UsageError) as err:
        load_vision_weights(encoder, "vit_base_patch16_clip_224.openai")
    message = str(err.value)
    assert "\n" not in message and "'vit_base_patch16_clip_224.openai'" in message
    assert "--set model.vision.weights=PATH" in message
    with pytest.raises(UsageError, match="not a file, a folder or a timm model name"):
        load_vision_weights(encoder, "vit_no_such_model")


# ----------------------------------------------------------------------------- text
def test_saved_roberta_folder(roberta_dir: Path) -> None:
    tokenizer = tokenizer_of(roberta_dir)
    cfg = TextConfig(width=32, layers=2, heads=2, max_len=12)
    model = SCLModel(tiny_model_config(cfg), tokenizer.vocab_size, tokenizer.pad_id).eval()
    report = load_text_weights(model.text, str(roberta_dir))
    assert report.layout == "transformers"
    assert set(report.ignored) == {"pooler.dense.weight", "pooler.dense.bias"}
    assert report.notes == ["position table cut from 40 to 14 rows (model.text.max_len)"]
    reference = RobertaModel.from_pretrained(roberta_dir).eval()
    ids, mask = tokenizer.encode(["a red cube is left of a ring", "a ball"], 12)
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask).last_hidden_state
        torch.testing.assert_close(model.encode_text(ids, mask), expected, rtol=1e-5, atol=1e-5)


def test_text_mismatch_and_offline_errors(roberta_dir: Path) -> None:
    tokenizer = tokenizer_of(roberta_dir)
    other_vocab = SCLModel(tiny_model_config(TextConfig(width=32, layers=2, heads=2, max_len=12)), 999, 1)
    with pytest.raises(CheckpointError, match=rf"vocab_size {tokenizer.vocab_size} vs 999"):
        load_text_weights(other_vocab.text, str(roberta_dir))
    with pytest.raises(UsageError) as err:
        load_text_weights(other_vocab.text, "FacebookAI/roberta-base")
    assert "\n" not in str(err.value) and "--set model.text.weights=PATH" in str(err.value)


# ----------------------------------------------------------------------------- the recipe
def tiny_model_config(text: TextConfig | None = None, **fields: object) -> ModelConfig:
    defaults = dict(
        init="random",
        vision=vision_config(),
        text=text or TextConfig(width=32, layers=2, heads=2, max_len=12),
        fusion=FusionConfig(width=32, layers=1, heads=2),
        itc_dim=16,
    )
    return ModelConfig(**{**defaults, **fields})


def test_from_recipe_model_loads_both_encoders(clip_file: Path, roberta_dir: Path) -> None:
    tokenizer = tokenizer_of(roberta_dir)
    cfg = tiny_model_config(init="pretrained")
    cfg.vision.weights, cfg.text.weights = str(clip_file), str(roberta_dir)
    model = SCLModel.from_recipe_model(cfg, tokenizer.vocab_size, tokenizer.pad_id)
    assert [r.part for r in model.init_reports] == ["vision", "text"]
    assert torch.equal(model.vision.conv1.weight, clip_state_dict()["visual.conv1.weight"])


def test_base_recipe_runs_with_local_copies(
    shapes_root: Path, clip_file: Path, roberta_dir: Path, tmp_path: Path
) -> None:
    vocab = tokenizer_of(roberta_dir).vocab_size
    sets = {
        "model.vision.image_size": 48, "model.vision.patch_size": 8, "model.vision.width": WIDTH,
        "model.vision.layers": 2, "model.vision.heads": 2, "model.vision.max_frames": 2,
        "model.vision.weights": f'"{clip_file}"',
        "model.text.width": 32, "model.text.layers": 2, "model.text.heads": 2, "model.text.max_len": 12,
        "model.text.vocab_size": vocab, "model.text.tokenizer": f'"{roberta_dir}"',
        "model.text.weights": f'"{roberta_dir}"',
        "model.fusion.width": 32, "model.fusion.layers": 1, "model.fusion.heads": 2, "model.itc_dim": 16,
        "data.root": f'"{shapes_root}"', "data.train": '"shapes"', "data.num_workers": 0,
        "data.shuffle_buffer": 8, "topology.devices_per_node": 1, "topology.device": '"cpu"',
        "optim.batch_size": 4, "optim.micro_batch_size": 4, "optim.max_steps": 1,
        "output.dir": f'"{tmp_path / "run"}"', "output.checkpoint_every": 1, "log.tensorboard": "false",
        "log.every": 1,
    }  # fmt: skip
    recipe = load_recipe(RECIPES / "base.toml", [f"{k}={v}" for k, v in sets.items()])
    assert recipe.model.init == "pretrained"
    built = build(recipe)
    assert torch.equal(built.model.vision.class_embedding, clip_state_dict()["visual.class_embedding"])
    result = pretrain(recipe)
    assert result.steps == 1 and result.last_loss is not None
    config = json.loads((result.last_checkpoint / "config.json").read_text())
    assert config["model"]["vision"]["weights"] == str(clip_file)


def test_fine_tuning_may_switch_on_attention_across_frames_but_not_change_shapes():
    from scl_cli.config.recipe import ModelConfig, VisionConfig
    from scl_cli.model.loading import merge_model_config

    saved = ModelConfig(vision=VisionConfig(width=64, layers=2, heads=2))
    merged = merge_model_config(saved, ModelConfig(vision=VisionConfig(temporal_attention=True)), "ckpt")
    assert merged.vision.temporal_attention and merged.vision.width == 64
    with pytest.raises(CheckpointError, match=r"model\.vision\.width = 32 \(checkpoint: 64\)"):
        merge_model_config(saved, ModelConfig(vision=VisionConfig(width=32, heads=2)), "ckpt")
