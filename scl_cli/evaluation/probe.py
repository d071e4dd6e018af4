"""A small held-out probe of what pre-training has learnt, cheap enough to run during training:
zero-shot ITC retrieval both ways and ITM accuracy on held-out pairs with random negatives.

The probe set is the first `images` samples of a split, each with its first caption; its pixels
and tokens are prepared once. ITM pairs every image with its caption and with the caption of
another image drawn by a fixed seed, so every evaluation scores the same pairs.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import torch

from scl_cli.data.collate import sample_pixels
from scl_cli.data.manifests import parse_source
from scl_cli.data.task_batches import iter_split, sample_json
from scl_cli.data.tokenizer import TextTokenizer
from scl_cli.data.transforms import ImageTransform
from scl_cli.errors import DataError
from scl_cli.metrics.retrieval import retrieval_recall
from scl_cli.model.preprocess import to_model_input


@dataclass
class ProbeSet:
    pixels: torch.Tensor  # uint8 [N, T, 3, S, S]
    ids: torch.Tensor  # [N, L]
    mask: torch.Tensor  # [N, L]
    captions: list[str]
    negatives: torch.Tensor  # [N]: the image whose caption is image i's ITM negative (never i)

    def __len__(self) -> int:
        return self.pixels.shape[0]


def load_probe_set(
    data_root: Path, dataset: str, split: str, images: int, tokenizer: TextTokenizer, image_size: int,
    max_len: int, frames: int = 1, seed: int = 0,
) -> ProbeSet:  # fmt: skip
    """The first `images` samples of `dataset` ("NAME" or "NAME:GROUP") / `split`."""
    name, group = parse_source(dataset)
    transform = ImageTransform(image_size)
    samples = list(itertools.islice(iter_split(Path(data_root), name, split, group), images))
    if len(samples) < 2:
        raise DataError(f"{Path(data_root) / name}: split '{split}' has {len(samples)} sample(s); the evaluation "
                        "needs at least 2 (eval.split / eval.data)")  # fmt: skip
    pixels = torch.stack([sample_pixels(s, transform, None, frames) for s in samples])
    captions = [sample_json(s)["captions"][0] for s in samples]
    ids, mask = tokenizer.encode(captions, max_len)
    n = len(samples)
    shift = torch.randint(1, n, (n,), generator=torch.Generator().manual_seed(seed))
    return ProbeSet(pixels, ids, mask, captions, (torch.arange(n) + shift) % n)


@torch.no_grad()
def probe(model, probe_set: ProbeSet, device: torch.device, batch: int = 64) -> dict[str, float]:
    """`ir_r1`, `ir_r5` (text -> image), `tr_r1`, `tr_r5` (image -> text) in percent by ITC
    similarity, and `itm_acc` (a fraction): how often the ITM head tells an image's caption (match)
    from another image's caption (no match), over 2N pairs."""
    image_itc, image_tokens, text_itc, text_tokens = [], [], [], []
    for rows in torch.arange(len(probe_set)).split(batch):
        enc = model.encode_image(to_model_input(probe_set.pixels[rows].to(device)))
        image_itc.append(model.itc_image(enc).float())
        image_tokens.append(model.embed_image(enc))
        ids, mask = probe_set.ids[rows].to(device), probe_set.mask[rows].to(device)
        hidden = model.encode_text(ids, mask)
        text_itc.append(model.itc_text(hidden, mask).float())
        text_tokens.append(model.embed_text(hidden))
    image_itc, text_itc = torch.cat(image_itc), torch.cat(text_itc)
    image_tokens, text_tokens = torch.cat(image_tokens), torch.cat(text_tokens)
    recall = retrieval_recall((image_itc @ text_itc.t()).cpu(), torch.arange(len(probe_set)))
    frames = probe_set.pixels.shape[1]
    mask = probe_set.mask.to(device)
    correct = 0
    for rows in torch.arange(len(probe_set)).split(batch):
        other = probe_set.negatives[rows]
        texts = torch.cat([text_tokens[rows.to(device)], text_tokens[other.to(device)]])
        masks = torch.cat([mask[rows.to(device)], mask[other.to(device)]])
        images = image_tokens[rows.to(device)].repeat(2, 1, 1)
        logits = model.itm_logits(model.pooled(model.fuse(texts, masks, images), frames))
        labels = torch.cat([torch.ones(len(rows)), torch.zeros(len(rows))]).long().to(device)
        correct += int((logits.argmax(dim=1) == labels).sum())
    return {
        "ir_r1": recall["ir_r1"], "ir_r5": recall["ir_r5"], "tr_r1": recall["tr_r1"], "tr_r5": recall["tr_r5"],
        "itm_acc": correct / (2 * len(probe_set)),
    }  # fmt: skip
