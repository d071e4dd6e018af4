"""Engine of `scl visualize`: the fusion's text-to-image cross-attention over an image or a clip,
as the paper's `visualize_global.py` / `visualize_local.py` draw it (last fusion layer, maximum
over heads): the text class token's map, then one map per word (sub-word pieces summed,
punctuation skipped). `masked=True` draws the local-SCL view instead: which patches a 30% mask
replaced, and how close the fusion outputs there come to those of the unmasked image."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from scl_cli.data.media import MediaError, load_file
from scl_cli.data.transforms import ImageTransform
from scl_cli.errors import UsageError
from scl_cli.evaluation.align import caption_attention, merge_words
from scl_cli.figures.heatmaps import Panel, chunk_rows, columns_for, heatmap_grid
from scl_cli.inference import SCL
from scl_cli.model.preprocess import to_model_input
from scl_cli.objectives.masking import mask_patches

VIDEO_SUFFIXES = (".mp4", ".webm", ".avi", ".mov", ".mkv", ".gif")


@dataclass
class VisualizeResult:
    path: Path
    words: list[str]  # the words drawn (empty for --masked)
    frames: int


def visualize(
    ckpt: Path,
    image: Path,
    text: str,
    out: Path | None = None,
    masked: bool = False,
    frames: int = 4,
    mask_share: float = 0.3,
    seed: int = 0,
    device: str = "auto",
) -> VisualizeResult:
    if not text.strip():
        raise UsageError("--text is empty")
    scl = SCL.from_pretrained(ckpt, device=device)
    size = scl.model_config.vision.image_size
    shown, pixels = _read(Path(image), size, frames, scl.model_config.vision.max_frames)
    out = Path(out or f"{Path(image).stem}-attention.png")
    if masked:
        rows = _masked_rows(scl, shown, pixels, text, mask_share, seed)
        heatmap_grid(rows, out, f"local SCL: {text}")
        return VisualizeResult(out, [], len(shown))
    rows, words = [], []
    for t, frame in enumerate(shown):
        global_map, pieces, piece_maps = caption_attention(
            scl.module, scl.tokenizer, pixels[t], text, scl.device, scl.dtype
        )
        words, word_maps = merge_words(pieces, piece_maps)
        label = f"frame {t + 1}" if len(shown) > 1 else "image"
        panels = [Panel(label, frame), Panel("global ([CLS])", frame, global_map)]
        panels += [Panel(word, frame, m) for word, m in zip(words, word_maps, strict=True)]
        rows += chunk_rows(panels, len(panels) if len(shown) > 1 else columns_for(len(panels), 5))
    heatmap_grid(rows, out, text)
    return VisualizeResult(out, words, len(shown))


def _read(path: Path, size: int, frames: int, max_frames: int) -> tuple[list[Image.Image], torch.Tensor]:
    """(what to draw on, uint8 model input [T, 3, size, size]). A still image is squashed to the
    model's square as the paper's scripts do (Resize((size, size)), no crop) and drawn whole; a
    clip's frames go through the model's own transform and are drawn as the model saw them."""
    if not path.is_file():
        raise UsageError(f"--image {path}: no such file")
    if path.suffix.lower() in VIDEO_SUFFIXES:
        try:
            pixels = load_file(path, ImageTransform(size), max(1, min(frames, max_frames)))
        except MediaError as err:
            raise UsageError(f"--image {path}: {err}") from None
        return [Image.fromarray(p.permute(1, 2, 0).numpy()) for p in pixels], pixels
    try:
        with Image.open(path) as opened:
            original = opened.convert("RGB")
    except (OSError, ValueError) as err:
        raise UsageError(f"--image {path}: not an image ({err})") from None
    squashed = original.resize((size, size), Image.Resampling.BICUBIC)
    pixels = torch.from_numpy(np.asarray(squashed, dtype=np.uint8).copy()).permute(2, 0, 1)[None]
    return [original], pixels


@torch.inference_mode()
def _masked_rows(
    scl: SCL, shown: list[Image.Image], pixels: torch.Tensor, text: str, share: float, seed: int
) -> list[list[Panel]]:
    """Per frame: the mask (replaced patches dark), and the cosine similarity of the fusion image
    outputs at the replaced patches to the unmasked image's outputs at the same places."""
    model, dev = scl.module, scl.device
    vision = model.config.vision
    grid = vision.image_size // vision.patch_size
    ids, text_mask = scl.tokenize([text])
    ids, text_mask = ids.to(dev), text_mask.to(dev)
    text_emb = model.embed_text(model.encode_text(ids, text_mask))
    clip = to_model_input(pixels[None].to(dev)).to(scl.dtype)
    generator = torch.Generator().manual_seed(seed)
    mask = mask_patches(
        1, grid * grid, share, dev, noise=torch.rand(1, grid * grid, generator=generator).to(dev)
    ).mask
    outputs = []
    for token_mask in (None, mask):
        image_emb = model.embed_image(model.encode_image(clip, token_mask=token_mask))
        outputs.append(model.fuse(text_emb, text_mask, image_emb).image)
    frames = pixels.shape[0]
    full, recovered = (o.unflatten(1, (frames, -1))[0, :, 1:] for o in outputs)  # [T, N, D]
    similarity = torch.nn.functional.cosine_similarity(full.float(), recovered.float(), dim=-1)  # [T, N]
    chosen = mask[0].cpu().numpy().reshape(grid, grid)
    rows = []
    for t, frame in enumerate(shown):
        sim = similarity[t].cpu().numpy().reshape(grid, grid)
        rows.append([
            Panel("replaced patches", frame, np.where(chosen, 1.0, np.nan), cmap="Greys", normalise=False,
                  smooth=False),
            Panel(f"recovery (cosine, mean {sim[chosen].mean():.2f})", frame, np.where(chosen, sim, np.nan),
                  cmap="viridis", normalise=False, vmin=-1.0, vmax=1.0, smooth=False, colorbar=True),
        ])  # fmt: skip
    return rows
