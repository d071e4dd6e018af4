"""Real initialisation: CLIP ViT weights into `SCLModel.vision`, RoBERTa weights into `SCLModel.text`.

A source is a local file (safetensors, a `torch.load(weights_only=True)` state dict, or a TorchScript
archive such as OpenAI's `ViT-B-16.pt`), a local folder (a timm / Hugging Face Hub download holding
`model.safetensors`, `open_clip_pytorch_model.bin` ..., or a transformers model folder for text), or
a hub name (`vit_base_patch16_clip_224.openai`, `FacebookAI/roberta-base`).

Vision state dicts come in three layouts, all mapped onto our CLIP-named encoder: OpenAI CLIP and
open_clip (`visual.conv1.weight`, `visual.transformer.resblocks.N.*`; the text tower is ignored),
timm (`cls_token`, `patch_embed.proj`, `blocks.N.attn.qkv` ...) and our own (`vision.*`). Every
source key is mapped or listed as ignored with a reason; anything else is an error naming it.
"""

from __future__ import annotations

import contextlib
import re
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from scl_cli.errors import CheckpointError, SclError, UsageError
from scl_cli.model.vision import VisionEncoder, interpolate_positional_embedding
from scl_cli.recipe.schema import ModelConfig
from scl_cli.training.checkpoint import is_safetensors, load_tensor_file

if TYPE_CHECKING:
    from scl_cli.model.scl_model import SCLModel

# Weight files of a downloaded model folder, in order of preference (safetensors first).
WEIGHT_FILES = (
    "model.safetensors",
    "open_clip_model.safetensors",
    "pytorch_model.bin",
    "open_clip_pytorch_model.bin",
)
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
_MAX_LISTED = 10


@dataclass
class LoadReport:
    """What a weight load did: every source key is in `mapped` or `ignored`.

    mapped: source key -> our key; ignored: source key -> why it is not used; new: our key -> why it
    keeps its initial value; notes: anything else worth telling (interpolation, slicing).
    """

    part: str
    source: str
    layout: str
    mapped: dict[str, str] = field(default_factory=dict)
    ignored: dict[str, str] = field(default_factory=dict)
    new: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line: `vision: 152 tensors from X (openai-clip); 13 ignored; new: mask_token; ...`."""
        parts = [f"{self.part}: {len(self.mapped)} tensors from {self.source} ({self.layout})"]
        if self.ignored:
            reasons: dict[str, int] = {}
            for reason in self.ignored.values():
                reasons[reason] = reasons.get(reason, 0) + 1
            parts.append("ignored " + ", ".join(f"{n} ({r})" for r, n in reasons.items()))
        if self.new:
            parts.append("new " + ", ".join(self.new))
        return "; ".join(parts + self.notes)


# ----------------------------------------------------------------------------- entry points
def initialise_pretrained(model: SCLModel, cfg: ModelConfig) -> list[LoadReport]:
    """Load `cfg.vision.weights` into `model.vision` and `cfg.text.weights` into `model.text`.

    `model` is an `SCLModel`; the fusion layers and heads keep their random initialisation, as in the
    paper. Returns the two reports (vision, text).
    """
    return [
        load_vision_weights(model.vision, cfg.vision.weights),
        load_text_weights(model.text, cfg.text.weights),
    ]


def load_vision_weights(encoder: VisionEncoder, source: str) -> LoadReport:
    """Initialise a CLIP-layout `VisionEncoder` from a file, a folder or a timm name.

    The first `encoder.config.layers` blocks are kept (the paper keeps 11 of CLIP's 12: the others are
    reported as unused by design) and the position grid is interpolated to the encoder's image size.
    """
    state, where = _vision_state_dict(source)
    tensors, report = map_vision_state_dict(state, encoder, where)
    encoder.load_state_dict({**encoder.state_dict(), **tensors})
    return report


def load_text_weights(text_model: nn.Module, source: str) -> LoadReport:
    """Initialise our `RobertaModel` (`SCLModel.text`) from a transformers folder, hub name or weight file.

    Widths, heads, feed-forward size, padding id and vocabulary must match the model (an error says
    which do not); the source's longer position table is cut to the model's `max_len`.
    """
    state, where, layout, source_config, ignored = _text_state_dict(source)
    if source_config is not None:
        _check_text_config(source_config, text_model.config, where)
    tensors, report = _map_text_state_dict(state, text_model, where, layout)
    report.ignored.update(ignored)
    text_model.load_state_dict({**text_model.state_dict(), **tensors})
    return report


# ----------------------------------------------------------------------------- resolving a source
def _looks_like_path(source: str) -> bool:
    return source.startswith(("/", "./", "../", "~")) or source.endswith(
        (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".jit")
    )


def read_weight_file(path: Path) -> dict[str, Tensor]:
    """Tensors of a weight file: safetensors, a weights-only torch file, or a TorchScript archive.

    A TorchScript archive (OpenAI's CLIP `.pt` files) is code plus tensors; loading it runs no Python
    pickle, and only its `state_dict()` is kept. Anything needing arbitrary unpickling is refused.
    """
    path = Path(path)
    if not is_safetensors(path) and _is_torchscript(path):
        try:
            with warnings.catch_warnings():  # torch >= 2.10 marks TorchScript deprecated; CLIP ships in it
                warnings.simplefilter("ignore", FutureWarning)
                return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
        except RuntimeError as e:
            raise CheckpointError(f"{path}: unreadable TorchScript archive ({_first_line(e)})") from None
    loaded = load_tensor_file(path)
    return _unwrap_state_dict(loaded, path)


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in archive.namelist())


def _unwrap_state_dict(loaded: Any, path: Path) -> dict[str, Tensor]:
    """The tensors of a loaded file, looking inside `state_dict` / `model` wrappers and dropping a
    DDP `module.` prefix."""
    for key in ("state_dict", "model"):
        if isinstance(loaded, Mapping) and isinstance(loaded.get(key), Mapping):
            loaded = loaded[key]
    if not isinstance(loaded, Mapping) or not loaded:
        raise CheckpointError(f"{path} holds no state dict (found {type(loaded).__name__})")
    state = {k: v for k, v in loaded.items() if isinstance(v, Tensor)}
    others = [k for k in loaded if k not in state]
    if others:
        raise CheckpointError(f"{path}: entries that are not tensors: {format_keys(others)}")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _read_folder(folder: Path, field_name: str) -> tuple[dict[str, Tensor], str]:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return read_weight_file(folder / name), str(folder / name)
    raise UsageError(
        f"{folder} ({field_name}): folder holds none of {', '.join(WEIGHT_FILES)}; pass the weight file itself"
    )


def _vision_state_dict(source: str) -> tuple[dict[str, Tensor], str]:
    path = Path(source).expanduser()
    if path.is_file():
        return read_weight_file(path), str(path)
    if path.is_dir():
        return _read_folder(path, "model.vision.weights")
    if _looks_like_path(source):
        raise UsageError(f"{source} (model.vision.weights): no such file or folder")
    return _timm_hub_state_dict(source), source


def _offline_hint(field_name: str, example: str) -> str:
    return (
        f"download them once while online, or pass a local copy with --set {field_name}=PATH "
        f"({example}), or start from scratch with --set model.init=random"
    )


def _timm_hub_state_dict(name: str) -> dict[str, Tensor]:
    """A timm model's pretrained weights (timm layout) from the Hugging Face Hub or its local cache."""
    import timm
    from timm.models import get_pretrained_cfg, load_state_dict_from_hf

    architecture = name.split(":", 1)[-1].split(".", 1)[0]
    if not name.startswith("hf-hub:") and not timm.is_model(architecture):
        raise UsageError(
            f"vision weights '{name}' (model.vision.weights): not a file, a folder or a timm model name"
        )
    hint = _offline_hint("model.vision.weights", "a CLIP .pt file or a folder with model.safetensors")
    try:
        cfg = None if name.startswith("hf-hub:") else get_pretrained_cfg(name)
        if cfg is not None and cfg.hf_hub_id:
            # The weight file alone: no need to build the timm model just to read its state dict.
            return dict(load_state_dict_from_hf(cfg.hf_hub_id, cfg.hf_hub_filename or "pytorch_model.bin"))
        with _quiet_transformers():
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
    return _check_and_cast(tensors, encoder.state_dict(), _VISION_NEW, report, source), report


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


# ----------------------------------------------------------------------------- text
def _text_state_dict(
    source: str,
) -> tuple[dict[str, Tensor], str, str, Any, dict[str, str]]:
    """(state dict, where, layout, transformers config or None, keys already ignored with reasons)."""
    path = Path(source).expanduser()
    if path.is_file():
        return read_weight_file(path), str(path), "state dict", None, {}
    if path.is_dir() and not (path / "config.json").is_file():
        raise UsageError(
            f"{path} (model.text.weights): not a transformers model folder (no config.json); "
            "pass a folder written by save_pretrained / a hub download, or a weight file"
        )
    if not path.is_dir() and _looks_like_path(source):
        raise UsageError(f"{source} (model.text.weights): no such file or folder")
    return _from_transformers(str(path) if path.is_dir() else source)


def _from_transformers(source: str) -> tuple[dict[str, Tensor], str, str, Any, dict[str, str]]:
    from transformers import AutoConfig, RobertaModel

    hint = _offline_hint("model.text.weights", "a folder with config.json and model.safetensors")
    try:
        with _quiet_transformers():
            config = AutoConfig.from_pretrained(source)
            if config.model_type != "roberta":
                raise UsageError(
                    f"text weights '{source}' (model.text.weights): a {config.model_type} model; the text "
                    "encoder is RoBERTa"
                )
            hf, info = RobertaModel.from_pretrained(source, add_pooling_layer=False, output_loading_info=True)
    except SclError:
        raise
    except Exception as err:  # hub clients raise OSError, HTTP and their own errors alike
        raise UsageError(
            f"text weights '{source}' (model.text.weights): not in the local cache and not fetched "
            f"from the Hugging Face Hub ({type(err).__name__}) — {hint}"
        ) from None
    if info.get("missing_keys"):
        raise CheckpointError(
            f"{source}: RoBERTa weights missing {format_keys(sorted(info['missing_keys']))}"
        )
    ignored = {}
    for key in info.get("unexpected_keys", []):
        if "pooler." in key:
            ignored[key] = "RoBERTa pooler; unused (the fusion poolers replace it)"
        elif key.startswith("lm_head."):
            ignored[key] = "RoBERTa's LM head; unused (the MLM head is trained from scratch, as in the paper)"
        else:
            ignored[key] = "not part of RobertaModel"
    return dict(hf.state_dict()), source, "transformers", config, ignored


def _check_text_config(theirs: Any, ours: Any, source: str) -> None:
    checks = (
        ("hidden_size", "model.text.width"),
        ("num_attention_heads", "model.text.heads"),
        ("intermediate_size", "model.text.mlp_ratio x width"),
        ("vocab_size", "model.text.vocab_size / the tokenizer's vocabulary"),
        ("pad_token_id", "the tokenizer's <pad> id"),
    )
    wrong = [
        f"{name} {getattr(theirs, name)} vs {getattr(ours, name)} ({what})"
        for name, what in checks
        if getattr(theirs, name) != getattr(ours, name)
    ]
    if theirs.num_hidden_layers < ours.num_hidden_layers:
        wrong.append(
            f"num_hidden_layers {theirs.num_hidden_layers} < {ours.num_hidden_layers} (model.text.layers)"
        )
    if wrong:
        raise CheckpointError(
            f"text weights {source} do not fit the model (weights vs model): {'; '.join(wrong)}; use the "
            "tokenizer that came with the weights (model.text.tokenizer) and matching model.text sizes"
        )


_TEXT_PREFIXES = ("text_transformer.", "roberta.", "text.")
_TEXT_IGNORED = (
    ("pooler.", "RoBERTa pooler; unused (the fusion poolers replace it)"),
    ("lm_head.", "RoBERTa's LM head; unused (the MLM head is trained from scratch, as in the paper)"),
    ("embeddings.position_ids", "buffer of older transformers versions"),
    ("embeddings.token_type_ids", "buffer of older transformers versions"),
)


def _map_text_state_dict(
    state: Mapping[str, Tensor], text_model: nn.Module, source: str, layout: str
) -> tuple[dict[str, Tensor], LoadReport]:
    report = LoadReport("text", source, layout)
    own = text_model.state_dict()
    layers = text_model.config.num_hidden_layers
    tensors: dict[str, Tensor] = {}
    unplaced: list[str] = []
    for key, tensor in state.items():
        name = next((key[len(p) :] for p in _TEXT_PREFIXES if key.startswith(p)), key)
        reason = next((why for p, why in _TEXT_IGNORED if name.startswith(p)), None)
        layer = re.match(r"^encoder\.layer\.(\d+)\.", name)
        if reason is None and layer is not None and int(layer.group(1)) >= layers:
            reason = f"unused (model.text.layers = {layers})"
        if reason is not None:
            report.ignored[key] = reason
        elif name in own:
            tensors[name] = tensor
            report.mapped[key] = name
        else:
            unplaced.append(key)
    if unplaced:
        raise CheckpointError(f"{source}: cannot place {len(unplaced)} text key(s): {format_keys(unplaced)}")
    positions = "embeddings.position_embeddings.weight"
    if positions in tensors and tensors[positions].shape[0] != own[positions].shape[0]:
        rows = tensors[positions].shape[0]
        tensors[positions] = slice_positions(tensors[positions], own[positions].shape[0], source)
        report.notes.append(
            f"position table cut from {rows} to {own[positions].shape[0]} rows (model.text.max_len)"
        )
    return _check_and_cast(tensors, own, {}, report, source), report


def slice_positions(table: Tensor, rows: int, source: str) -> Tensor:
    """RoBERTa's position table [P, w] cut to the model's `rows` (positions count from pad + 1, so
    the first rows are the ones a shorter model uses). Refuses a table that is too short."""
    if table.shape[0] < rows:
        raise CheckpointError(
            f"{source}: the position table has {table.shape[0]} rows but the model needs {rows}; "
            "lower model.text.max_len"
        )
    return table[:rows]


# ----------------------------------------------------------------------------- shared checks
def _check_and_cast(
    tensors: dict[str, Tensor],
    own: Mapping[str, Tensor],
    allowed_new: Mapping[str, str],
    report: LoadReport,
    source: str,
) -> dict[str, Tensor]:
    """Check names and shapes against the module's state dict; record what stays new; cast dtypes."""
    mismatched = [
        f"{k} {list(t.shape)} vs {list(own[k].shape)}" for k, t in tensors.items() if t.shape != own[k].shape
    ]
    if mismatched:
        raise CheckpointError(
            f"{source}: shapes do not fit the model (weights vs model): {format_keys(mismatched)}; "
            f"check the {report.part} sizes in the recipe (model.{report.part}.*)"
        )
    missing = [k for k in own if k not in tensors]
    lacking = [k for k in missing if k not in allowed_new]
    if lacking:
        raise CheckpointError(f"{source}: {report.part} weights lack {format_keys(lacking)}")
    for key in missing:
        report.new[key] = allowed_new[key]
    return {k: t.detach().to(own[k].dtype) for k, t in tensors.items()}


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' loading chatter (unused-weight notices): the report says it instead."""
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)


def format_keys(keys: list[str]) -> str:
    """`[a, b, ... 3 more]`: keys for a one-line error message."""
    shown = ", ".join(keys[:_MAX_LISTED])
    more = f", ... {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else ""
    return f"[{shown}{more}]"


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


__all__ = [
    "LoadReport",
    "format_keys",
    "initialise_pretrained",
    "load_text_weights",
    "load_vision_weights",
    "map_vision_state_dict",
    "read_weight_file",
    "slice_positions",
]
