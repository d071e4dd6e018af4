"""Real initialisation and published weights: CLIP ViT weights into `SCLModel.vision` (`clip`),
RoBERTa weights into `SCLModel.text` (`roberta`), weight files as they come (`files`), the
published SCL checkpoint's key layout (`model.official`); every load reports what it did (`report`).

A source is a local file (safetensors, a `torch.load(weights_only=True)` state dict, or a TorchScript
archive such as OpenAI's `ViT-B-16.pt`), a local folder (a timm / Hugging Face Hub download, or a
transformers model folder for text), or a hub name (`vit_base_patch16_clip_224.openai`,
`FacebookAI/roberta-base`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from scl_cli.config.recipe import ModelConfig
from scl_cli.model.weights.clip import load_vision_weights, map_vision_state_dict
from scl_cli.model.weights.files import read_weight_file
from scl_cli.model.weights.report import LoadReport, format_keys
from scl_cli.model.weights.roberta import load_text_weights, slice_positions

if TYPE_CHECKING:
    from scl_cli.model.scl_model import SCLModel


def initialise_pretrained(model: SCLModel, cfg: ModelConfig) -> list[LoadReport]:
    """Load `cfg.vision.weights` into `model.vision` and `cfg.text.weights` into `model.text`.

    `model` is an `SCLModel`; the fusion layers and heads keep their random initialisation, as in the
    paper. Returns the two reports (vision, text).
    """
    return [
        load_vision_weights(model.vision, cfg.vision.weights),
        load_text_weights(model.text, cfg.text.weights),
    ]


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
