"""Image-text (and video-text) retrieval evaluation: every image and caption through its encoder
once, ITC over the whole split, the top K re-ranked by the fusion score; recall@1/5/10 both ways."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from scl_cli.data.task_batches import (
    CaptionBatcher,
    iter_split,
    sample_json,
)
from scl_cli.evaluation.common import EvalData, EvalReport, chunks
from scl_cli.inference import SCL
from scl_cli.search.ranking import recall_at_k_two_stage, two_stage_scores


# ----------------------------------------------------------------------------- retrieval
@dataclass
class EncodedSplit:
    image_itc: torch.Tensor  # [N_i, E]
    image_tokens: torch.Tensor  # [N_i, S, D] fusion-space embeddings (with token type)
    text_itc: torch.Tensor  # [N_t, E]
    text_tokens: torch.Tensor  # [N_t, L, D]
    text_mask: torch.Tensor  # [N_t, L]
    text_to_image: torch.Tensor  # [N_t]
    frames: int = 1  # frames per clip (1 for images)
    foil_itc: torch.Tensor | None = None  # [N_i, E] ITC feature of each clip's opposite-motion caption
    foil_tokens: torch.Tensor | None = None  # [N_i, L, D]
    foil_mask: torch.Tensor | None = None  # [N_i, L]
    first_caption: torch.Tensor | None = None  # [N_i] index of each clip's first caption


def encode_split(model: SCL, data: EvalData, batch_size: int, progress) -> EncodedSplit:
    """Every image and every caption through its unimodal encoder exactly once."""
    num_frames = int(((model.config.get("recipe") or {}).get("data") or {}).get("num_frames", 4))
    batcher = CaptionBatcher(model.tokenizer, model.transform, model.max_len, num_frames)
    store = torch.float16 if model.device.type == "cuda" else torch.float32
    image_itc, image_tokens, captions, owner, foils, first = [], [], [], [], [], []
    images, frames = 0, 1
    for chunk in chunks(iter_split(data.root, data.dataset, data.split, data.group), batch_size):
        pixels = batcher.images_only(chunk)
        frames = pixels.shape[1]
        itc, tokens = model.image_features(pixels)
        image_tokens.append(tokens.to("cpu", store))
        image_itc.append(itc.cpu())
        for s in chunk:
            record = sample_json(s)
            first.append(len(captions))
            for caption in record["captions"]:
                captions.append(caption)
                owner.append(images)
            foils.append((record.get("foils") or [None])[0])
            images += 1
        progress("images", images)

    def encode_texts(texts: list[str], stage: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        text_itc, text_tokens, masks = [], [], []
        for chunk in chunks(texts, max(batch_size, 64)):
            feats = model.text_features(chunk)
            text_tokens.append(feats.tokens.to("cpu", store))
            text_itc.append(feats.itc.cpu())
            masks.append(feats.mask.cpu())
            progress(stage, sum(len(t) for t in text_tokens))
        return torch.cat(text_itc), torch.cat(text_tokens), torch.cat(masks)

    text_itc, text_tokens, masks = encode_texts(captions, "captions")
    enc = EncodedSplit(torch.cat(image_itc), torch.cat(image_tokens), text_itc, text_tokens, masks,
                       torch.tensor(owner), frames)  # fmt: skip
    if foils and all(f is not None for f in foils):  # shapes clips: the same caption, opposite motion
        enc.foil_itc, enc.foil_tokens, enc.foil_mask = encode_texts(foils, "foils")
        enc.first_caption = torch.tensor(first)
    return enc


def motion_foil_rates(model: SCL, enc: EncodedSplit, fusion: bool) -> dict[str, float]:
    """Share of clips whose caption scores above its opposite-direction foil (%): by ITC
    similarity, and by the fusion score when `fusion`. 50 is chance."""
    caption = enc.first_caption
    itc_true = (enc.image_itc * enc.text_itc[caption]).sum(-1)
    itc_foil = (enc.image_itc * enc.foil_itc).sum(-1)
    out = {"motion_itc": 100 * (itc_true > itc_foil).float().mean().item()}
    if fusion:
        images = torch.arange(len(enc.image_itc))
        true_scores, foil_scores = [], []
        for chunk in images.split(64):
            image = enc.image_tokens[chunk]
            true_scores.append(model.fusion_scores(enc.text_tokens[caption[chunk]], enc.text_mask[caption[chunk]],
                                                   image, enc.frames).cpu())  # fmt: skip
            foil_scores.append(
                model.fusion_scores(enc.foil_tokens[chunk], enc.foil_mask[chunk], image, enc.frames).cpu()
            )
        out["motion_fusion"] = 100 * (torch.cat(true_scores) > torch.cat(foil_scores)).float().mean().item()
    return out


def pair_scorer(model: SCL, enc: EncodedSplit) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Fusion score of (image, caption) index pairs: the rank head after retrieval fine-tuning, the
    ITM match logit otherwise (zero-shot from a pre-training checkpoint)."""

    def score(image_idx: torch.Tensor, text_idx: torch.Tensor) -> torch.Tensor:
        images = enc.image_tokens.index_select(0, image_idx.cpu())
        texts = enc.text_tokens.index_select(0, text_idx.cpu())
        mask = enc.text_mask.index_select(0, text_idx.cpu())
        return model.fusion_scores(texts, mask, images, enc.frames).cpu()

    return score


def eval_retrieval(model: SCL, data: EvalData, batch_size: int, progress, rerank: int | str) -> EvalReport:
    enc = encode_split(model, data, batch_size, progress)
    k: int | str | None = rerank
    scorer = pair_scorer(model, enc)
    scores = two_stage_scores(enc.image_itc, enc.text_itc, scorer if rerank != 0 else None, k,
                              progress=lambda stage, done, total: progress(stage, done))  # fmt: skip
    metrics = recall_at_k_two_stage(scores, enc.text_to_image)
    n_images = len(enc.image_itc)
    baseline = {"ir_r1": 100 / n_images, "tr_r1": 100 / n_images}  # chance level
    if enc.frames > 1:  # clips: text-to-video and video-to-text, as the video papers name them
        metrics = {_VIDEO_NAMES.get(k, k): v for k, v in metrics.items()}
        baseline = {_VIDEO_NAMES.get(k, k): v for k, v in baseline.items()}
    if enc.foil_itc is not None:
        metrics |= motion_foil_rates(model, enc, fusion=rerank != 0)
        baseline |= {"motion_itc": 50.0, **({"motion_fusion": 50.0} if rerank != 0 else {})}
    details = {"images": n_images, "captions": len(enc.text_itc), "rerank": rerank, "frames": enc.frames,
               "scorer": model.scorer}  # fmt: skip
    return EvalReport("retrieval", "", data.dataset, data.split, n_images, 0.0, metrics, baseline, details)


_VIDEO_NAMES = {"ir_r1": "t2v_r1", "ir_r5": "t2v_r5", "ir_r10": "t2v_r10",
                "tr_r1": "v2t_r1", "tr_r5": "v2t_r5", "tr_r10": "v2t_r10"}  # fmt: skip
