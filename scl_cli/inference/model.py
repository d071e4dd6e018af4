"""`SCL`: a trained SCL model ready to use from Python — the API of `scl.load`, and what `scl eval`,
`scl index`, `scl retrieve` and `scl serve` compute with.

```python
import scl_cli as scl
model = scl.load("runs/tiny")                       # run, checkpoint, published .ckpt or Hub id
model.embed_images(["a.jpg", pil_image])            # [N, E] unit ITC features (videos: paths)
model.embed_texts(["a red circle"])                 # [N, E]
model.score(images, texts)                          # [N] fusion match score per pair
model.answer(image, "what colour is the circle?")   # VQA head -> Answer(answer, score, top)
model.nlvr2(left, right, "the left image has two stars")  # NLVR2 head -> Verdict(label, probability)
model.save_pretrained("out/"); model.push_to_hub("user/repo")
```

Inputs are paths, encoded bytes, PIL images, numpy arrays or tensors (`inference.inputs`); the
model's own image transform (resize + centre crop to its size) and tokenizer are applied here, in
batches, on `device` ("auto": the first GPU, else the CPU) and in `dtype`, under
`torch.inference_mode`. High-level methods return float32 CPU tensors or small dataclasses; the
lower-level ones (`image_features`, `text_features`, `fusion_scores`, `vqa_logits`,
`nlvr2_logits`) take ready batches and return tensors on the device, for evaluation and search.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from scl_cli.config.recipe import ModelConfig
from scl_cli.data.tokenizer import TextTokenizer
from scl_cli.data.transforms import ImageTransform
from scl_cli.devices import pick_device
from scl_cli.errors import CheckpointError, UsageError
from scl_cli.inference.inputs import ImageInput, InputError, check_texts, to_pixels
from scl_cli.inference.pretrained import PretrainedMixin
from scl_cli.model.preprocess import to_model_input
from scl_cli.model.scl_model import SCLModel

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}  # fmt: skip
DEFAULT_VIDEO_FRAMES = 4


@dataclass
class TextFeatures:
    """Text queries through the text encoder: itc [N, E] (unit, float32), tokens [N, L, D] in the
    fusion space (None when not asked for), mask [N, L] (1 = real token)."""

    itc: Tensor
    tokens: Tensor | None
    mask: Tensor


@dataclass
class Answer:
    """A VQA answer: the best answer, its probability (sigmoid of the head's logit; the head is
    trained with soft-score BCE) and the `top` answers with theirs, best first."""

    question: str
    answer: str
    score: float
    top: list[tuple[str, float]] = field(default_factory=list)


@dataclass
class Verdict:
    """An NLVR2 judgement: whether `statement` is true of the image pair, and P(true)."""

    statement: str
    label: bool
    probability: float


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """None / "auto" -> float32; "bf16" / "bfloat16" / torch.bfloat16, ... -> the torch dtype."""
    if dtype is None or dtype == "auto":
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise UsageError(f"dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def _singular(items: Any, single_types: tuple[type, ...]) -> tuple[list[Any], bool]:
    if isinstance(items, single_types):
        return [items], True
    return list(items), False


IMAGE_TYPES: tuple[type, ...] = (str, Path, bytes, bytearray)


def _image_list(images: ImageInput | Sequence[ImageInput]) -> tuple[list[Any], bool]:
    """A list of images, and whether one image was given (a path, bytes, PIL image, array or tensor)."""
    import numpy as np
    from PIL import Image

    return _singular(images, (*IMAGE_TYPES, Image.Image, np.ndarray, torch.Tensor))


class SCL(PretrainedMixin):
    """A trained SCL model with its tokenizer and image transform (see the module docstring).

    Build one with `SCL.from_pretrained(name)` (= `scl_cli.load`), or around a model in memory:
    `SCL(module, tokenizer)`. Attributes: `module` (the `SCLModel`), `tokenizer`, `config` (the
    checkpoint's config.json), `answers` (the VQA answer list, or None), `device`, `dtype`, `source`.
    """

    def __init__(
        self,
        module: SCLModel,
        tokenizer: TextTokenizer | None = None,
        config: dict[str, Any] | None = None,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype | None = None,
        answers: list[str] | None = None,
        source: str = "model",
    ) -> None:
        self.device = pick_device(device)
        self.dtype = parse_dtype(dtype)
        self.module = module.to(self.device, self.dtype).eval()
        self.tokenizer = tokenizer
        self.config: dict[str, Any] = dict(config or {})
        self.config.setdefault("model", module.config.model_dump(mode="json"))
        self.config.setdefault("vocab_size", module.vocab_size)
        self.config.setdefault("pad_token_id", module.pad_token_id)
        self.source = source
        self.answers = answers
        if answers is not None and module.has_head("vqa") and len(answers) != module.vqa_head[3].out_features:
            raise CheckpointError(f"{source}: the answer list has {len(answers)} answers, the VQA head "
                                  f"{module.vqa_head[3].out_features}")  # fmt: skip
        self.transform = ImageTransform(module.config.vision.image_size)

    # ------------------------------------------------------------------ facts
    @property
    def model_config(self) -> ModelConfig:
        return self.module.config

    @property
    def heads(self) -> list[str]:
        """Fine-tuning heads present: a subset of ["vqa", "nlvr2", "rank"]."""
        return [name for name in ("vqa", "nlvr2", "rank") if self.module.has_head(name)]

    @property
    def scorer(self) -> str:
        """What `score` / `fusion_scores` use: "rank head" or "ITM match logit"."""
        return self.module.match_scorer

    @property
    def max_len(self) -> int:
        return self.module.config.text.max_len

    @property
    def video_frames(self) -> int:
        return max(1, min(DEFAULT_VIDEO_FRAMES, self.module.config.vision.max_frames))

    def __repr__(self) -> str:
        heads = ", ".join(self.heads) or "none"
        return f"SCL({self.source!r}, heads: {heads}, device={self.device}, dtype={self.dtype})"

    def require_head(self, head: str) -> None:
        """A one-line `UsageError` naming the checkpoint when the head `head` is missing."""
        try:
            self.module.require_head(head)
        except UsageError as err:
            raise UsageError(f"{self.source}: {err}") from None

    def _tok(self) -> TextTokenizer:
        if self.tokenizer is None:
            raise UsageError(
                f"{self.source}: no tokenizer — pass one to SCL(...) or scl.load(..., tokenizer=...)"
            )
        return self.tokenizer

    # ------------------------------------------------------------------ batches (tensors on the device)
    def tokenize(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """ids, mask [N, max_len] (CPU)."""
        return self._tok().encode(list(texts), self.max_len)

    def pixels(self, images: Sequence[ImageInput], frames: int | None = None) -> list[Tensor]:
        """Each image as uint8 [T, 3, S, S] (videos: up to `frames` frames, default 4)."""
        return [to_pixels(image, self.transform, frames or self.video_frames) for image in images]

    @torch.inference_mode()
    def image_features(self, pixels: Tensor, with_tokens: bool = True) -> tuple[Tensor, Tensor | None]:
        """pixels [B, T, 3, S, S] (uint8, or already CLIP-normalised floats) -> (ITC features
        [B, E] float32, unit length; fusion-space tokens [B, T * (1 + n), D] or None). A clip's
        feature is the mean of its frame class tokens."""
        x = to_model_input(pixels.to(self.device, non_blocking=True))
        enc = self.module.encode_image(x.to(self.dtype))
        itc = self.module.itc_image(enc).float()
        return itc, (self.module.embed_image(enc) if with_tokens else None)

    @torch.inference_mode()
    def text_features(
        self, texts: Sequence[str] | tuple[Tensor, Tensor], with_tokens: bool = True
    ) -> TextFeatures:
        """Texts (or ready ids, mask [N, L]) -> `TextFeatures` on the device."""
        ids, mask = texts if isinstance(texts, tuple) else self.tokenize(texts)
        ids, mask = ids.to(self.device), mask.to(self.device)
        tokens = self.module.encode_text(ids, mask)
        itc = self.module.itc_text(tokens, mask).float()
        return TextFeatures(itc, self.module.embed_text(tokens) if with_tokens else None, mask)

    @torch.inference_mode()
    def fusion_scores(
        self, text_tokens: Tensor, text_mask: Tensor, image_tokens: Tensor, frames: int = 1
    ) -> Tensor:
        """Fusion match score of B (text, image) pairs (`scorer`): text_tokens [B, L, D], text_mask
        [B, L], image_tokens [B, S, D] from `text_features` / `image_features` -> float32 [B]."""
        dev, dt = self.device, self.dtype
        return self.module.match_scores(
            text_tokens.to(dev, dt), text_mask.to(dev), image_tokens.to(dev, dt), frames
        ).float()

    @torch.inference_mode()
    def vqa_logits(
        self, images: Tensor, ids: Tensor, mask: Tensor, question_image: Tensor | None = None
    ) -> Tensor:
        """Answer logits [Q, A] float32: images [B, T, 3, S, S], questions ids / mask [Q, L], question
        q about image question_image[q] (None: one question per image)."""
        self.require_head("vqa")
        _, image_tokens = self.image_features(images)
        text = self.text_features((ids, mask))
        qi = question_image.to(self.device) if question_image is not None else None
        return self.module.vqa_logits(text.tokens, text.mask, image_tokens, qi, images.shape[1]).float()

    @torch.inference_mode()
    def nlvr2_logits(self, images: Tensor, images2: Tensor, ids: Tensor, mask: Tensor) -> Tensor:
        """[B, 2] float32 logits (index 1 = true) of statements ids / mask [B, L] about the pairs
        (images [B, T, 3, S, S], images2 the same)."""
        self.require_head("nlvr2")
        module = self.module
        first = module.encode_image(to_model_input(images.to(self.device)).to(self.dtype))
        second = module.encode_image(to_model_input(images2.to(self.device)).to(self.dtype))
        ids, mask = ids.to(self.device), mask.to(self.device)
        text = module.embed_text(module.encode_text(ids, mask))
        return module.nlvr2_logits(text, mask, first, second, images.shape[1]).float()

    # ------------------------------------------------------------------ the Python API
    def _encode_images(self, images: list[Any], batch_size: int, frames: int | None, with_tokens: bool):
        """ITC [N, E] (CPU) and fusion tokens per image (device; None unless with_tokens), in
        batches of images with the same frame count."""
        pixels = self.pixels(images, frames)
        itc: list[Tensor | None] = [None] * len(pixels)
        tokens: list[Tensor | None] = [None] * len(pixels)
        by_frames: dict[int, list[int]] = {}
        for i, p in enumerate(pixels):
            by_frames.setdefault(int(p.shape[0]), []).append(i)
        for rows in by_frames.values():
            for a in range(0, len(rows), batch_size):
                chunk = rows[a : a + batch_size]
                feats, toks = self.image_features(torch.stack([pixels[i] for i in chunk]), with_tokens)
                for j, i in enumerate(chunk):
                    itc[i] = feats[j].cpu()
                    tokens[i] = toks[j] if toks is not None else None
        return torch.stack(itc) if itc else torch.zeros(0, self.module.config.itc_dim), tokens, pixels  # type: ignore[arg-type]

    def embed_images(
        self, images: ImageInput | Sequence[ImageInput], batch_size: int = 32, frames: int | None = None
    ) -> Tensor:
        """Unit-length ITC features [N, E] (float32, CPU) of images or clips (video paths: up to
        `frames` frames, default 4); one image gives [1, E]."""
        items, _ = _image_list(images)
        if not items:
            return torch.zeros(0, self.module.config.itc_dim)
        itc, _, _ = self._encode_images(items, batch_size, frames, with_tokens=False)
        return itc

    def embed_texts(self, texts: str | Sequence[str], batch_size: int = 64) -> Tensor:
        """Unit-length ITC features [N, E] (float32, CPU) of texts; one string gives [1, E]."""
        items = check_texts([texts] if isinstance(texts, str) else list(texts))
        out = [self.text_features(items[a : a + batch_size], with_tokens=False).itc.cpu()
               for a in range(0, len(items), batch_size)]  # fmt: skip
        return torch.cat(out) if out else torch.zeros(0, self.module.config.itc_dim)

    def score(
        self, images: ImageInput | Sequence[ImageInput], texts: str | Sequence[str], batch_size: int = 32
    ) -> Tensor:
        """Fusion match score [N] (float32, CPU; higher = better match; `scorer` says which head) of
        image i with text i. One image with N texts, or N images with one text, pairs it with each."""
        image_items, _ = _image_list(images)
        text_items = check_texts([texts] if isinstance(texts, str) else list(texts))
        n_i, n_t = len(image_items), len(text_items)
        if n_i != n_t and 1 not in (n_i, n_t):
            raise InputError(f"score pairs image i with text i: got {n_i} images and {n_t} texts")
        n = max(n_i, n_t)
        _, image_tokens, pixels = self._encode_images(image_items, batch_size, None, with_tokens=True)
        scores = torch.empty(n)
        for a in range(0, n, batch_size):
            rows = list(range(a, min(n, a + batch_size)))
            text = self.text_features([text_items[0 if n_t == 1 else i] for i in rows])
            image_idx = [0 if n_i == 1 else i for i in rows]
            # pairs with clips of different lengths go through the fusion encoder separately
            for t in sorted({int(pixels[i].shape[0]) for i in image_idx}):
                sel = [j for j, i in enumerate(image_idx) if int(pixels[i].shape[0]) == t]
                toks = torch.stack([image_tokens[image_idx[j]] for j in sel])  # type: ignore[misc]
                pick = torch.tensor(sel, device=self.device)
                values = self.fusion_scores(text.tokens[pick], text.mask[pick], toks, t)  # type: ignore[index]
                scores[torch.tensor([rows[j] for j in sel])] = values.cpu()
        return scores

    def answer(
        self, images: ImageInput | Sequence[ImageInput], questions: str | Sequence[str], top_k: int = 3,
        batch_size: int = 32,
    ) -> Answer | list[Answer]:  # fmt: skip
        """VQA: the answer to each question. One image with one or more questions (all about it), or
        N images with N questions (question i about image i). One question gives one `Answer`."""
        self.require_head("vqa")
        if self.answers is None:
            raise UsageError(f"{self.source}: has a VQA head but no answer list (config.json heads.vqa.vocabulary) — "
                             "pass answers=FILE.json to scl.load")  # fmt: skip
        image_items, _ = _image_list(images)
        single = isinstance(questions, str)
        qs = check_texts([questions] if single else list(questions), "question")
        if len(image_items) != 1 and len(image_items) != len(qs):
            raise InputError(f"answer takes one image, or one image per question: got {len(image_items)} images "
                             f"and {len(qs)} questions")  # fmt: skip
        pixels = self.pixels(image_items, 1)
        results: list[Answer] = []
        k = max(1, min(top_k, len(self.answers)))
        for a in range(0, len(qs), batch_size):
            chunk = qs[a : a + batch_size]
            if len(image_items) == 1:
                images_t, owner = pixels[0].unsqueeze(0), torch.zeros(len(chunk), dtype=torch.long)
            else:
                images_t, owner = torch.stack(pixels[a : a + batch_size]), torch.arange(len(chunk))
            ids, mask = self.tokenize(chunk)
            probs = self.vqa_logits(images_t, ids, mask, owner).sigmoid().cpu()
            values, index = probs.topk(k, dim=1)
            for q, v, i in zip(chunk, values.tolist(), index.tolist(), strict=True):
                top = [(self.answers[j], float(p)) for j, p in zip(i, v, strict=True)]
                results.append(Answer(q, top[0][0], top[0][1], top))
        return results[0] if single else results

    def nlvr2(
        self, left: ImageInput | Sequence[ImageInput], right: ImageInput | Sequence[ImageInput],
        statements: str | Sequence[str], batch_size: int = 32,
    ) -> Verdict | list[Verdict]:  # fmt: skip
        """NLVR2: is each statement true of its image pair (left[i], right[i])? One statement gives
        one `Verdict`."""
        self.require_head("nlvr2")
        lefts, _ = _image_list(left)
        rights, _ = _image_list(right)
        single = isinstance(statements, str)
        texts = check_texts([statements] if single else list(statements), "statement")
        if not (len(lefts) == len(rights) == len(texts)):
            raise InputError(f"nlvr2 takes one left image, one right image and one statement per pair: got "
                             f"{len(lefts)}, {len(rights)} and {len(texts)}")  # fmt: skip
        out: list[Verdict] = []
        for a in range(0, len(texts), batch_size):
            first = torch.stack(self.pixels(lefts[a : a + batch_size], 1))
            second = torch.stack(self.pixels(rights[a : a + batch_size], 1))
            ids, mask = self.tokenize(texts[a : a + batch_size])
            probs = self.nlvr2_logits(first, second, ids, mask).softmax(dim=-1)[:, 1].cpu().tolist()
            out += [
                Verdict(t, p > 0.5, float(p)) for t, p in zip(texts[a : a + batch_size], probs, strict=True)
            ]
        return out[0] if single else out
