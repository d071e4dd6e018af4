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

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from scl_cli.config.recipe import ModelConfig
from scl_cli.data.tokenizer import TextTokenizer, load_tokenizer
from scl_cli.data.transforms import ImageTransform
from scl_cli.devices import pick_device
from scl_cli.errors import CheckpointError, UsageError
from scl_cli.inference.inputs import ImageInput, InputError, check_texts, to_pixels
from scl_cli.model.checkpoint import read_checkpoint
from scl_cli.model.loading import build_model
from scl_cli.model.preprocess import to_model_input
from scl_cli.model.scl_model import SCLModel
from scl_cli.model.task_heads import VQA_VOCABULARY_FILE, describe_heads

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


class SCL:
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

    # ------------------------------------------------------------------ loading and saving
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        *,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype | None = None,
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        token: str | bool | None = None,
        local_files_only: bool = False,
        tokenizer: str | Path | TextTokenizer | None = None,
        answers: str | Path | list[str] | None = None,
        data_root: str | Path = "data",
    ) -> SCL:
        """Load a run folder (its newest checkpoint), a checkpoint or `save_pretrained` folder, a
        published SCL `.ckpt` (converted in memory) or a Hugging Face Hub model id (`user/repo`;
        `revision`, `cache_dir`, `token`, `local_files_only` as in `huggingface_hub`).

        `tokenizer` replaces the checkpoint's (a tokenizer.json path or a Hub tokenizer name; a
        converted published checkpoint names `FacebookAI/roberta-base`); `answers` gives the VQA
        answer list (a JSON file or a list) when the checkpoint has a VQA head without one.
        """
        from scl_cli.inference.hub import resolve_source

        path = resolve_source(name_or_path, revision, cache_dir, token, local_files_only)
        state, config = read_checkpoint(path)
        built = build_model(state, config)
        del state
        if isinstance(tokenizer, TextTokenizer):
            tok = tokenizer
        else:
            spec = str(tokenizer) if tokenizer is not None else str(config.get("tokenizer") or "FacebookAI/roberta-base")
            tok = load_tokenizer(spec, Path(data_root), "")
        vocabulary = _answer_list(answers, config, path)
        source = str(name_or_path) if not Path(str(name_or_path)).exists() else str(config.get("checkpoint", path))
        return cls(built.model, tok, config, device, dtype, vocabulary, source)

    def save_pretrained(
        self, save_directory: str | Path, *, model_card: str | bool = True, repo_id: str | None = None
    ) -> Path:
        """Write a self-contained folder that `scl.load` (and the Hub) reads: `model.safetensors`,
        `config.json` (architecture, heads, recipe), `tokenizer.json`, `answers.json` (VQA) and a
        `README.md` model card (`model_card`: True = generated, a string = that text, False = none).
        Files are replaced atomically; other files in the folder are left alone."""
        from scl_cli.io.atomic import atomic_file, atomic_write_json, atomic_write_text
        from scl_cli.io.checkpoints import CONFIG_FILE, FORMAT, MODEL_FILE, VERSION
        from scl_cli.io.tensors import save_safetensors

        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        config = self.saved_config()
        with atomic_file(out / MODEL_FILE) as tmp:
            save_safetensors({k: v.detach().cpu() for k, v in self.module.state_dict().items()}, tmp)
        if self.tokenizer is not None:
            with atomic_file(out / "tokenizer.json") as tmp:
                self.tokenizer.save(tmp)
        if self.answers is not None:
            atomic_write_json(out / VQA_VOCABULARY_FILE, self.answers, indent=None)
        atomic_write_json(out / CONFIG_FILE, {"format": FORMAT, "version": VERSION, **config})
        if model_card:
            text = model_card if isinstance(model_card, str) else self.model_card(repo_id)
            atomic_write_text(out / "README.md", text)
        return out

    def model_card(self, repo_id: str | None = None, reports: list[dict[str, Any]] | None = None) -> str:
        """README.md text: architecture, heads, the recipe, the training data's manifests (when
        still on disk) and the evaluation reports kept with the checkpoint (`eval*.json`) plus
        `reports`."""
        from scl_cli.inference.card import find_manifests, find_reports, model_card

        found = find_reports(self.config.get("checkpoint")) + list(reports or [])
        return model_card(self.saved_config(), repo_id, self.module.num_parameters(), found,
                          find_manifests(self.config), self._recipe_toml())  # fmt: skip

    def saved_config(self) -> dict[str, Any]:
        """config.json of `save_pretrained`: the checkpoint's, with the heads described, the
        tokenizer and answer files named, and the machine-local `checkpoint` path dropped."""
        config = {k: v for k, v in self.config.items() if k not in ("checkpoint", "format", "version")}
        config["model"] = self.module.config.model_dump(mode="json")
        config["vocab_size"], config["pad_token_id"] = self.module.vocab_size, self.module.pad_token_id
        config["heads"] = describe_heads(self.module, VQA_VOCABULARY_FILE if self.answers is not None else None)
        config["tokenizer"] = "tokenizer.json" if self.tokenizer is not None else config.get("tokenizer")
        config.setdefault("step", 0)
        config.pop("extra_heads", None)
        return config

    def push_to_hub(
        self,
        repo_id: str,
        *,
        private: bool | None = None,
        token: str | bool | None = None,
        commit_message: str = "Upload SCL model",
        revision: str | None = None,
        create_pr: bool = False,
        model_card: str | bool = True,
    ) -> str:
        """`save_pretrained` into a temporary folder and upload it to the Hub model repo `repo_id`
        (created when missing) as one commit; returns the commit URL."""
        import tempfile

        from scl_cli.inference.hub import upload_folder

        with tempfile.TemporaryDirectory(prefix="scl-push-") as tmp:
            self.save_pretrained(tmp, model_card=model_card, repo_id=repo_id)
            return upload_folder(Path(tmp), repo_id, private, token, commit_message, revision, create_pr)

    def _recipe_toml(self) -> str | None:
        recipe = self.config.get("recipe")
        if not isinstance(recipe, dict):
            return None
        try:
            from scl_cli.config import recipe_from_dict, recipe_to_toml

            return recipe_to_toml(recipe_from_dict(recipe))
        except Exception:  # a recipe of another scl version: the card shows it as JSON instead
            return "# recipe (JSON, as stored in config.json)\n# " + json.dumps(recipe)

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
            raise UsageError(f"{self.source}: no tokenizer — pass one to SCL(...) or scl.load(..., tokenizer=...)")
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
    def fusion_scores(self, text_tokens: Tensor, text_mask: Tensor, image_tokens: Tensor, frames: int = 1) -> Tensor:
        """Fusion match score of B (text, image) pairs (`scorer`): text_tokens [B, L, D], text_mask
        [B, L], image_tokens [B, S, D] from `text_features` / `image_features` -> float32 [B]."""
        dev, dt = self.device, self.dtype
        return self.module.match_scores(
            text_tokens.to(dev, dt), text_mask.to(dev), image_tokens.to(dev, dt), frames
        ).float()

    @torch.inference_mode()
    def vqa_logits(self, images: Tensor, ids: Tensor, mask: Tensor, question_image: Tensor | None = None) -> Tensor:
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
            out += [Verdict(t, p > 0.5, float(p)) for t, p in zip(texts[a : a + batch_size], probs, strict=True)]
        return out[0] if single else out


def _answer_list(answers: str | Path | list[str] | None, config: dict[str, Any], path: Path) -> list[str] | None:
    """The VQA answer list: `answers` (a list or a JSON file), else the file config.json names
    (`heads.vqa.vocabulary`, beside the weights), else an `answers.json` there (checkpoints written
    before config.json described its heads); None when there is none."""
    if isinstance(answers, list):
        return [str(a) for a in answers]
    if answers is not None:
        files = [Path(answers)]
        if not files[0].is_file():
            raise CheckpointError(f"answer list {answers} does not exist")
    else:
        folder = Path(str(config.get("checkpoint", path)))
        if not folder.is_dir():
            return None
        vqa = (config.get("heads") or {}).get("vqa") if isinstance(config.get("heads"), dict) else None
        named = vqa.get("vocabulary") if isinstance(vqa, dict) else None
        files = ([folder / named] if named else []) + [folder / VQA_VOCABULARY_FILE]
    for file in files:
        if file.is_file():
            try:
                data = json.loads(file.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
                raise CheckpointError(f"{file}: not a readable answer list ({err})") from None
            if not isinstance(data, list):
                raise CheckpointError(f"{file}: expected a JSON list of answers")
            return [str(a) for a in data]
    return None
