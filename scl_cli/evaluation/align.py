"""ALIGN-BENCH alignment scores, computed as IIGROUP/SCL's `align_global.py` and `align_local.py`
compute them: the share of a text-to-image attention map's mass inside the annotated regions.

- The map: the last fusion layer's text-to-image cross-attention (`model.attention_maps`), the
  maximum over heads, on the patch grid. Global: the text class token's row. Local: each caption
  word's rows summed over its sub-word pieces (a new word starts at a byte-level BPE piece with
  the `Ġ` space marker; pieces "." and "," are skipped).
- The regions: the union of an annotation's boxes (`box` score) and of its pixel masks (`pixel`
  score), resized to the grid like the scripts do it — torchvision's bicubic tensor resize of
  their time (no antialiasing), the image itself squashed to a square, not cropped.
- Global: all phrases' regions together, skipping boxes over 90% of the image (background).
  Local: per phrase, the first place its words appear in the caption (the scripts fall back to the
  caption's first word when they do not, and so does this), all its boxes; the image's score is
  the mean over its phrases. Both are averaged over the images.
- Baseline: what uniform attention scores, the regions' share of the grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from scl_cli.data.align_bench import Region
from scl_cli.errors import DataError
from scl_cli.model.attention_maps import patch_maps, text_to_image_attention
from scl_cli.model.preprocess import to_model_input

WORD_START = "Ġ"  # byte-level BPE's space marker (RoBERTa, GPT-2, the shapes tokenizer)
SKIPPED_PIECES = (".", ",")
BACKGROUND_SHARE = 0.9


def resize_mask(mask: np.ndarray, grid: int) -> np.ndarray:
    """[H, W] mask -> [grid, grid] float, bicubic without antialiasing (values may over/undershoot)."""
    tensor = torch.as_tensor(np.asarray(mask, dtype=np.float32))[None, None]
    return (
        F.interpolate(tensor, size=(grid, grid), mode="bicubic", align_corners=False)[0, 0].double().numpy()
    )


def mass_inside(att: np.ndarray, mask: np.ndarray) -> float:
    """Share of the attention map's mass under the (resized) mask: (mask * att).sum() / att.sum()."""
    return float((mask * att).sum() / att.sum())


def region_masks(
    regions: Sequence[Region], height: int, width: int, skip_background: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Union of the regions' boxes (float) and of their pixel masks (bool), both [H, W]."""
    box = np.zeros((height, width), dtype=np.float32)
    pixels = np.zeros((height, width), dtype=bool)
    for region in regions:
        x1, y1, x2, y2 = region.box
        if skip_background and (y2 - y1) * (x2 - x1) > BACKGROUND_SHARE * (width * height):
            continue
        # Python slicing, as the scripts' torch indexing: negative or reversed ends select what they select.
        box[y1:y2, x1:x2] = 1.0
        if region.pixels.shape != (height, width):
            raise DataError(
                f"a pixel_mask of shape {region.pixels.shape} on an image of {height}x{width} pixels"
            )
        pixels = pixels | region.pixels.astype(bool)
    return box, pixels


def merge_words(pieces: Sequence[str], maps: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Sub-word pieces [n] and their maps [n, g, g] -> words and the summed map of each word."""
    if not pieces:
        return [], maps[:0]
    words = [pieces[0].removeprefix(WORD_START)]
    merged = [maps[0].astype(np.float64)]
    for piece, piece_map in zip(pieces[1:], maps[1:], strict=True):
        if piece in SKIPPED_PIECES:
            continue
        if piece.startswith(WORD_START):
            words.append(piece[len(WORD_START) :])
            merged.append(piece_map.astype(np.float64))
        else:
            words[-1] += piece
            merged[-1] = merged[-1] + piece_map
    return words, np.stack(merged)


def phrase_index(words: Sequence[str], phrase: str) -> int:
    """Where the phrase's words first appear in the caption's words (lower-cased); 0 when they do
    not (the scripts' fallback)."""
    parts = phrase.split()
    lowered = [w.lower() for w in words]
    for i in range(len(lowered)):
        if lowered[i : i + len(parts)] == parts:
            return i
    return 0


@dataclass
class AlignScores:
    """Per image: global box/pixel score and the mean over phrases of the local ones (+ baselines)."""

    global_box: list[float] = field(default_factory=list)
    global_pixel: list[float] = field(default_factory=list)
    local_box: list[float] = field(default_factory=list)
    local_pixel: list[float] = field(default_factory=list)
    baseline_global_box: list[float] = field(default_factory=list)
    baseline_global_pixel: list[float] = field(default_factory=list)
    baseline_local_box: list[float] = field(default_factory=list)
    baseline_local_pixel: list[float] = field(default_factory=list)

    def means(self) -> dict[str, float]:
        return {
            name: float(np.mean(values)) if values else float("nan") for name, values in vars(self).items()
        }


def score_image(
    scores: AlignScores,
    global_map: np.ndarray,
    word_pieces: Sequence[str],
    piece_maps: np.ndarray,
    regions: dict[str, list[Region]],
    height: int,
    width: int,
) -> None:
    """Add one image's scores. global_map [g, g]; piece_maps [n, g, g] for the caption's pieces."""
    grid = global_map.shape[-1]
    uniform = np.ones((grid, grid))
    everything = [r for rs in regions.values() for r in rs]
    box, pixels = region_masks(everything, height, width, skip_background=True)
    box, pixels = resize_mask(box, grid), resize_mask(pixels, grid)
    scores.global_box.append(mass_inside(global_map, box))
    scores.global_pixel.append(mass_inside(global_map, pixels))
    scores.baseline_global_box.append(mass_inside(uniform, box))
    scores.baseline_global_pixel.append(mass_inside(uniform, pixels))

    words, word_maps = merge_words(word_pieces, piece_maps)
    local: dict[str, list[float]] = {"box": [], "pixel": [], "base_box": [], "base_pixel": []}
    for phrase, phrase_regions in regions.items():
        start, n = phrase_index(words, phrase), len(phrase.split())
        att = word_maps[start : start + n].sum(0)
        box, pixels = region_masks(phrase_regions, height, width, skip_background=False)
        box, pixels = resize_mask(box, grid), resize_mask(pixels, grid)
        local["box"].append(mass_inside(att, box))
        local["pixel"].append(mass_inside(att, pixels))
        local["base_box"].append(mass_inside(uniform, box))
        local["base_pixel"].append(mass_inside(uniform, pixels))
    if regions:
        scores.local_box.append(float(np.mean(local["box"])))
        scores.local_pixel.append(float(np.mean(local["pixel"])))
        scores.baseline_local_box.append(float(np.mean(local["base_box"])))
        scores.baseline_local_pixel.append(float(np.mean(local["base_pixel"])))


@torch.inference_mode()
def caption_attention(
    model,
    tokenizer,
    pixels: torch.Tensor,
    caption: str,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """The maps of one image (uint8 [3, S, S], squashed to the model's size) and its caption:
    (global map [g, g], the caption's pieces [n], their maps [n, g, g]), heads maxed out."""
    ids, mask = tokenizer.encode([caption], model.config.text.max_len)
    length = int(mask.sum())
    ids, mask = ids[:, :length].to(device), mask[:, :length].to(device)
    image = model.encode_image(to_model_input(pixels[None, None].to(device)).to(dtype))
    probs = text_to_image_attention(
        model, model.embed_text(model.encode_text(ids, mask)), mask, model.embed_image(image)
    )
    vision = model.config.vision
    maps = patch_maps(probs, 1, vision.image_size // vision.patch_size)[0, :, :, 0]  # [H, L, g, g]
    maps = maps.max(dim=0).values.double().cpu().numpy()  # heads maxed out: [L, g, g]
    pieces = [tokenizer.backend.id_to_token(int(i)) or "" for i in ids[0, 1 : length - 1]]
    return maps[0], pieces, maps[1 : length - 1]
