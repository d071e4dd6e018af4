"""RoBERTa weights into `SCLModel.text`: a transformers folder or Hub name, or a weight file in the
RoBERTa, published-SCL (`text_transformer.*`) or our (`text.*`) layout."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from scl_cli.errors import CheckpointError, SclError, UsageError
from scl_cli.model.weights.files import looks_like_path, read_weight_file
from scl_cli.model.weights.report import (
    LoadReport,
    check_and_cast,
    format_keys,
    offline_hint,
    quiet_transformers,
)

if TYPE_CHECKING:
    pass


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
    if not path.is_dir() and looks_like_path(source):
        raise UsageError(f"{source} (model.text.weights): no such file or folder")
    return _from_transformers(str(path) if path.is_dir() else source)


def _from_transformers(source: str) -> tuple[dict[str, Tensor], str, str, Any, dict[str, str]]:
    from transformers import AutoConfig, RobertaModel

    hint = offline_hint("model.text.weights", "a folder with config.json and model.safetensors")
    try:
        with quiet_transformers():
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
    return check_and_cast(tensors, own, {}, report, source), report


def slice_positions(table: Tensor, rows: int, source: str) -> Tensor:
    """RoBERTa's position table [P, w] cut to the model's `rows` (positions count from pad + 1, so
    the first rows are the ones a shorter model uses). Refuses a table that is too short."""
    if table.shape[0] < rows:
        raise CheckpointError(
            f"{source}: the position table has {table.shape[0]} rows but the model needs {rows}; "
            "lower model.text.max_len"
        )
    return table[:rows]
