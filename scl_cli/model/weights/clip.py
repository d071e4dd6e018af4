"""CLIP ViT weights into `SCLModel.vision`: OpenAI CLIP / open_clip (`visual.*`), timm (`blocks.N.attn.qkv`
...) and our own (`vision.*`) layouts, from a file, a folder or a timm name on the Hub. Every source
key is mapped or listed as ignored with a reason; anything else is an error naming it."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from torch import Tensor

from scl_cli.errors import CheckpointError, SclError, UsageError
from scl_cli.model.vision import VisionEncoder, interpolate_positional_embedding
from scl_cli.model.weights.files import looks_like_path, read_folder, read_weight_file
from scl_cli.model.weights.report import (
    LoadReport,
    check_and_cast,
    format_keys,
    offline_hint,
    quiet_transformers,
)

if TYPE_CHECKING:
    pass


# Our encoder parameters that a CLIP checkpoint does not hold, and why they keep their initial value.
_VISION_NEW = {
    "temporal_embedding": "ours only (video frames); starts at zero",
    "mask_token": "SCL's patch mask token; trained from scratch",
}


_CLIP_METADATA = {"input_resolution", "context_length", "vocab_size"}  # OpenAI JIT archive extras


_CLIP_PROJ = "CLIP's projection into its joint embedding space; unused (ITC has its own projections)"


_TIMM_BLOCK_NAMES = (
    ("norm1.", "ln_1."),
    ("attn.qkv.weight", "attn.in_proj_weight"),
    ("attn.qkv.bias", "attn.in_proj_bias"),
    ("attn.proj.", "attn.out_proj."),
    ("norm2.", "ln_2."),
    ("mlp.fc1.", "mlp.c_fc."),
    ("mlp.fc2.", "mlp.c_proj."),
)


_TIMM_TOP_NAMES = (
    ("patch_embed.proj.weight", "conv1.weight"),
    ("norm_pre.", "ln_pre."),
    ("norm.", "ln_post."),
)


_BLOCK = re.compile(r"^(?:transformer\.resblocks|blocks)\.(\d+)\.(.+)$")


def load_vision_weights(encoder: VisionEncoder, source: str) -> LoadReport:
    """Initialise a CLIP-layout `VisionEncoder` from a file, a folder or a timm name.

    The first `encoder.config.layers` blocks are kept (the paper keeps 11 of CLIP's 12: the others are
    reported as unused by design) and the position grid is interpolated to the encoder's image size.
    """
    state, where = _vision_state_dict(source)
    tensors, report = map_vision_state_dict(state, encoder, where)
    encoder.load_state_dict({**encoder.state_dict(), **tensors})
    return report


def _vision_state_dict(source: str) -> tuple[dict[str, Tensor], str]:
    path = Path(source).expanduser()
    if path.is_file():
        return read_weight_file(path), str(path)
    if path.is_dir():
        return read_folder(path, "model.vision.weights")
    if looks_like_path(source):
        raise UsageError(f"{source} (model.vision.weights): no such file or folder")
    return _timm_hub_state_dict(source), source


def _timm_hub_state_dict(name: str) -> dict[str, Tensor]:
    """A timm model's pretrained weights (timm layout) from the Hugging Face Hub or its local cache."""
    import timm
    from timm.models import get_pretrained_cfg, load_state_dict_from_hf

    architecture = name.split(":", 1)[-1].split(".", 1)[0]
    if not name.startswith("hf-hub:") and not timm.is_model(architecture):
        raise UsageError(
            f"vision weights '{name}' (model.vision.weights): not a file, a folder or a timm model name"
        )
    hint = offline_hint("model.vision.weights", "a CLIP .pt file or a folder with model.safetensors")
    try:
        cfg = None if name.startswith("hf-hub:") else get_pretrained_cfg(name)
        if cfg is not None and cfg.hf_hub_id:
            # The weight file alone: no need to build the timm model just to read its state dict.
            return dict(load_state_dict_from_hf(cfg.hf_hub_id, cfg.hf_hub_filename or "pytorch_model.bin"))
        with quiet_transformers():
            return dict(timm.create_model(name, pretrained=True).state_dict())
    except SclError:
        raise
    except Exception as err:  # hub clients raise OSError, HTTP and their own errors alike
        raise UsageError(
            f"vision weights '{name}' (model.vision.weights): not in the local cache and not fetched "
            f"from the Hugging Face Hub ({type(err).__name__}) — {hint}"
        ) from None


# ----------------------------------------------------------------------------- vision mapping
def map_vision_state_dict(
    state: Mapping[str, Tensor], encoder: VisionEncoder, source: str = "vision weights"
) -> tuple[dict[str, Tensor], LoadReport]:
    """Map a CLIP ViT state dict (OpenAI / open_clip, timm or ours) onto `encoder`'s names and shapes.

    Returns the tensors to load (cast to the encoder's dtypes, position grid interpolated) and the
    report. Raises `CheckpointError` naming every key it cannot place, missing or of the wrong shape.
    """
    layers = encoder.config.layers
    prefix, layout = _vision_layout(state, source)
    report = LoadReport("vision", source, layout)
    visual: dict[str, Tensor] = {}
    for key, tensor in state.items():
        if key.startswith(prefix):
            visual[key[len(prefix) :]] = tensor
        elif key in _CLIP_METADATA:
            report.ignored[key] = "CLIP archive metadata"
        elif layout == "scl":
            report.ignored[key] = "not part of the vision encoder"
        else:
            report.ignored[key] = "CLIP text tower; unused (the text encoder is RoBERTa)"

    rename = _timm_name if layout == "timm" else _clip_name
    tensors: dict[str, Tensor] = {}
    unplaced: list[str] = []
    blocks: set[int] = set()
    for key, tensor in visual.items():
        full = prefix + key
        ours, why = rename(key)
        if why is not None:
            report.ignored[full] = why
            continue
        if ours is None:
            unplaced.append(full)
            continue
        block = _BLOCK.match(ours)
        if block is not None:
            index = int(block.group(1))
            blocks.add(index)
            if index >= layers:
                report.ignored[full] = (
                    f"unused by design (model.vision.layers = {layers} keeps blocks 0..{layers - 1})"
                )
                continue
        tensors[ours] = tensor if layout != "timm" else _timm_tensor(ours, tensor)
        report.mapped[full] = ours
    if unplaced:
        raise CheckpointError(
            f"{source}: cannot place {len(unplaced)} vision key(s): {format_keys(unplaced)}"
        )
    if len(blocks) < layers:
        raise CheckpointError(
            f"{source} has {len(blocks)} ViT blocks but model.vision.layers = {layers}: lower it or use a deeper model"
        )
    _interpolate_positions(tensors, encoder, report)
    return check_and_cast(tensors, encoder.state_dict(), _VISION_NEW, report, source), report


def _vision_layout(state: Mapping[str, Tensor], source: str) -> tuple[str, str]:
    """(prefix of the vision keys, layout name) of a vision state dict."""
    keys = set(state)
    if "vision.class_embedding" in keys:
        return "vision.", "scl"
    if "visual.class_embedding" in keys:
        return "visual.", "openai-clip"
    if "class_embedding" in keys:
        return "", "openai-clip"
    if "cls_token" in keys and "patch_embed.proj.weight" in keys:
        return "", "timm"
    raise CheckpointError(
        f"{source} is not a CLIP ViT: expected `visual.class_embedding` (OpenAI CLIP / open_clip), "
        f"`cls_token` + `patch_embed.proj.weight` (timm) or `vision.class_embedding` (scl); "
        f"found {format_keys(sorted(keys))}"
    )


def _clip_name(key: str) -> tuple[str | None, str | None]:
    """(our name, None), (None, reason to ignore) or (None, None) for a key it cannot place."""
    if key == "proj":
        return None, _CLIP_PROJ
    block = _BLOCK.match(key)
    if block is not None:
        return f"blocks.{block.group(1)}.{block.group(2)}", None
    top = ("conv1.weight", "class_embedding", "positional_embedding", "temporal_embedding", "mask_token")
    if key in top or key.startswith(("ln_pre.", "ln_post.")):
        return key, None
    return None, None


def _timm_name(key: str) -> tuple[str | None, str | None]:
    if key.startswith("head."):
        return None, _CLIP_PROJ
    if key == "cls_token":
        return "class_embedding", None
    if key == "pos_embed":
        return "positional_embedding", None
    for theirs, ours in _TIMM_TOP_NAMES:
        if key.startswith(theirs):
            return ours + key[len(theirs) :], None
    block = re.match(r"^blocks\.(\d+)\.(.+)$", key)
    if block is not None:
        for theirs, ours in _TIMM_BLOCK_NAMES:
            if block.group(2).startswith(theirs):
                return f"blocks.{block.group(1)}.{ours}{block.group(2)[len(theirs) :]}", None
    return None, None


def _timm_tensor(ours: str, tensor: Tensor) -> Tensor:
    if ours == "class_embedding":
        return tensor.reshape(-1)  # [1, 1, w] -> [w]
    if ours == "positional_embedding":
        return tensor.reshape(-1, tensor.shape[-1])  # [1, 1 + N, w] -> [1 + N, w]
    return tensor


def _interpolate_positions(tensors: dict[str, Tensor], encoder: VisionEncoder, report: LoadReport) -> None:
    pos = tensors.get("positional_embedding")
    if pos is None or pos.dim() != 2 or pos.shape[0] == encoder.positional_embedding.shape[0]:
        return
    if pos.shape[1] != encoder.width:
        return  # the shape check names the width mismatch
    try:
        resized = interpolate_positional_embedding(pos.float(), encoder.grid)
    except ValueError as e:
        raise CheckpointError(f"{report.source}: positional_embedding: {e}") from None
    old = round((pos.shape[0] - 1) ** 0.5)
    report.notes.append(f"position grid {old}x{old} -> {encoder.grid}x{encoder.grid} (bicubic)")
    tensors["positional_embedding"] = resized
