"""Engine of `scl eval`: VQA, NLVR2 and image-text retrieval with the official metrics.

Every task reads the split once, in manifest order; each image and each caption goes through its
unimodal encoder once, and only the fusion encoder sees pairs.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from scl_cli.data.task_batches import (
    CaptionBatcher,
    NLVR2Batcher,
    VQABatcher,
    human_answers,
    iter_split,
    majority_answer,
    sample_json,
    vqa_answer_vocabulary,
)
from scl_cli.data.transforms import ImageTransform
from scl_cli.errors import UsageError
from scl_cli.metrics import normalize_vqa_answer, vqa_accuracy
from scl_cli.model.loading import LoadedModel, load_model
from scl_cli.objectives.nlvr2 import nlvr2_logits
from scl_cli.objectives.vqa import vqa_logits
from scl_cli.recipe.schema import MaskingConfig
from scl_cli.retrieval.features import fusion_scores, image_features, text_features
from scl_cli.training.masking import TextSpec
from scl_cli.training.step_context import StepContext

TASKS = ("vqa", "nlvr2", "retrieval")


@dataclass
class EvalReport:
    task: str
    checkpoint: str
    dataset: str
    split: str
    samples: int
    seconds: float
    metrics: dict[str, float]
    baselines: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def rows(self) -> list[list[str]]:
        rows = [[k, f"{v:.2f}", f"{self.baselines[k]:.2f}" if k in self.baselines else ""] for k, v in self.metrics.items()]
        return rows

    def write_json(self, path: Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        tmp.replace(path)


@dataclass
class EvalData:
    root: Path
    dataset: str
    group: str
    split: str


def resolve_data(config: dict[str, Any], data: str | None, split: str | None, task: str) -> EvalData:
    """Where to evaluate: `--data` (a data set folder or a name under the recipe's data.root), else
    the data set the checkpoint was fine-tuned on, else `shapes`; `--split`, else the recipe's
    evaluation split, else `test`."""
    recipe = config.get("recipe") or {}
    root = Path((recipe.get("data") or {}).get("root", "data"))
    saved = recipe.get("task") or {}
    same_task = saved.get("name") == task
    dataset = saved.get("dataset", "shapes") if same_task else "shapes"
    group = saved.get("group", "splits") if same_task else ("nlvr2" if task == "nlvr2" else "splits")
    if data is not None:
        # "PATH:GROUP" / "NAME:GROUP" picks a manifest group, e.g. data/shapes:clips for the clips.
        data, _, named_group = data.partition(":")
        path = Path(data)
        if (path / "manifest.json").is_file():
            root, dataset = path.parent, path.name
        else:
            dataset = data
        group = named_group or ("nlvr2" if task == "nlvr2" and dataset == "shapes" else "splits")
    chosen = split or (saved.get("eval_split") if same_task else None) or "test"
    return EvalData(root, dataset, group, chosen)


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def _context(loaded: LoadedModel, batch: dict[str, torch.Tensor]) -> StepContext:
    tok = loaded.tokenizer
    spec = TextSpec(loaded.model.vocab_size, tok.pad_id, tok.mask_id, tok.special_ids, tok.word_start)
    return StepContext(loaded.model, batch, MaskingConfig(), spec.to(batch["text_ids"].device))


# ----------------------------------------------------------------------------- VQA
def eval_vqa(loaded: LoadedModel, data: EvalData, batch_size: int, device: torch.device, progress) -> EvalReport:
    model = loaded.model
    if not hasattr(model, "vqa_head"):
        raise UsageError(f"{loaded.config.get('checkpoint')}: has no VQA head — fine-tune it first (scl finetune)")
    ckpt_answers = Path(str(loaded.config.get("checkpoint", ""))) / "answers.json"
    vocab = (
        json.loads(ckpt_answers.read_text()) if ckpt_answers.is_file() else vqa_answer_vocabulary(data.root, data.dataset)
    )
    if len(vocab) != model.vqa_head[3].out_features:
        raise UsageError(f"answer vocabulary has {len(vocab)} answers, the VQA head {model.vqa_head[3].out_features}")
    size = model.config.vision.image_size
    batcher = VQABatcher(loaded.tokenizer, ImageTransform(size), model.config.text.max_len, vocab, max_questions=10**6)
    predictions: dict[int, str] = {}
    scores: list[float] = []
    by_type: dict[str, list[float]] = defaultdict(list)
    majority = majority_answer(data.root, data.dataset)
    baseline: list[float] = []
    done = 0
    for chunk in _chunks(iter_split(data.root, data.dataset, data.split, data.group), batch_size):
        items = [(s, 0, None) for s in chunk]
        questions = [q for s in chunk for q in sample_json(s).get("vqa", [])]
        if not questions:
            continue
        batch = _to(batcher(items), device)
        logits = vqa_logits(_context(loaded, batch))
        answers = [vocab[i] for i in logits.argmax(dim=1).tolist()]
        for q, answer, qid in zip(questions, answers, batch["question_id"].tolist(), strict=True):
            if qid < 0:  # generated questions have no id of their own: number them in split order
                qid = len(predictions)
            predictions[qid] = answer
            humans = human_answers(q)
            if len(humans) == 1:
                # A generated answer ("two") is canonicalised like VQAv2's own answers ("2").
                humans = [normalize_vqa_answer(humans[0])] * 10
            if humans:
                acc = vqa_accuracy(answer, humans)
                scores.append(acc)
                by_type[q.get("answer_type") or q.get("type") or "all"].append(acc)
                baseline.append(vqa_accuracy(majority, humans))
        done += len(chunk)
        progress("vqa", done)
    metrics: dict[str, float] = {}
    details: dict[str, Any] = {"questions": len(predictions), "majority_answer": majority}
    if scores:
        metrics["accuracy"] = 100 * sum(scores) / len(scores)
        for kind, values in sorted(by_type.items()):
            metrics[f"accuracy/{kind}"] = 100 * sum(values) / len(values)
    details["predictions"] = [{"question_id": q, "answer": a} for q, a in predictions.items()]
    baselines = {"accuracy": 100 * sum(baseline) / len(baseline)} if baseline else {}
    return EvalReport("vqa", "", data.dataset, data.split, len(predictions), 0.0, metrics, baselines, details)


# ----------------------------------------------------------------------------- NLVR2
def eval_nlvr2(loaded: LoadedModel, data: EvalData, batch_size: int, device: torch.device, progress) -> EvalReport:
    model = loaded.model
    if not hasattr(model, "nlvr2_head"):
        raise UsageError(f"{loaded.config.get('checkpoint')}: has no NLVR2 head — fine-tune it first (scl finetune)")
    batcher = NLVR2Batcher(loaded.tokenizer, ImageTransform(model.config.vision.image_size), model.config.text.max_len)
    correct = total = positives = 0
    for chunk in _chunks(iter_split(data.root, data.dataset, data.split, data.group), batch_size):
        batch = _to(batcher([(s, 0, None) for s in chunk]), device)
        pred = nlvr2_logits(_context(loaded, batch)).argmax(dim=1)
        correct += int((pred == batch["labels"]).sum())
        positives += int(batch["labels"].sum())
        total += len(chunk)
        progress("nlvr2", total)
    if total == 0:
        raise UsageError(f"{data.dataset}/{data.split}: no NLVR2 samples")
    majority = 100 * max(positives, total - positives) / total
    return EvalReport("nlvr2", "", data.dataset, data.split, total, 0.0, {"accuracy": 100 * correct / total},
                      {"accuracy": majority})  # fmt: skip


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


@torch.no_grad()
def encode_split(loaded: LoadedModel, data: EvalData, batch_size: int, device: torch.device, progress) -> EncodedSplit:
    """Every image and every caption through its unimodal encoder exactly once."""
    model = loaded.model
    size, max_len = model.config.vision.image_size, model.config.text.max_len
    num_frames = int(((loaded.config.get("recipe") or {}).get("data") or {}).get("num_frames", 4))
    batcher = CaptionBatcher(loaded.tokenizer, ImageTransform(size), max_len, num_frames)
    store = torch.float16 if device.type == "cuda" else torch.float32
    image_itc, image_tokens, captions, owner, foils, first = [], [], [], [], [], []
    images, frames = 0, 1
    for chunk in _chunks(iter_split(data.root, data.dataset, data.split, data.group), batch_size):
        pixels = batcher.images_only(chunk)
        frames = pixels.shape[1]
        itc, tokens = image_features(model, pixels.to(device))
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
        for chunk in _chunks(texts, max(batch_size, 64)):
            ids, mask = loaded.tokenizer.encode(chunk, max_len)
            ids, mask = ids.to(device), mask.to(device)
            itc, tokens = text_features(model, ids, mask)
            text_tokens.append(tokens.to("cpu", store))
            text_itc.append(itc.cpu())
            masks.append(mask.cpu())
            progress(stage, sum(len(t) for t in text_tokens))
        return torch.cat(text_itc), torch.cat(text_tokens), torch.cat(masks)

    text_itc, text_tokens, masks = encode_texts(captions, "captions")
    enc = EncodedSplit(torch.cat(image_itc), torch.cat(image_tokens), text_itc, text_tokens, masks,
                       torch.tensor(owner), frames)  # fmt: skip
    if foils and all(f is not None for f in foils):  # shapes clips: the same caption, opposite motion
        enc.foil_itc, enc.foil_tokens, enc.foil_mask = encode_texts(foils, "foils")
        enc.first_caption = torch.tensor(first)
    return enc


@torch.no_grad()
def motion_foil_rates(loaded: LoadedModel, enc: EncodedSplit, device: torch.device, fusion: bool) -> dict[str, float]:
    """Share of clips whose caption scores above its opposite-direction foil (%): by ITC
    similarity, and by the fusion score when `fusion`. 50 is chance."""
    caption = enc.first_caption
    itc_true = (enc.image_itc * enc.text_itc[caption]).sum(-1)
    itc_foil = (enc.image_itc * enc.foil_itc).sum(-1)
    out = {"motion_itc": 100 * (itc_true > itc_foil).float().mean().item()}
    if fusion:
        model, images = loaded.model, torch.arange(len(enc.image_itc))
        true_scores, foil_scores = [], []
        for chunk in images.split(64):
            image = enc.image_tokens[chunk].to(device, torch.float32)
            true_scores.append(fusion_scores(model, enc.text_tokens[caption[chunk]].to(device, torch.float32),
                                             enc.text_mask[caption[chunk]].to(device), image, enc.frames).cpu())  # fmt: skip
            foil_scores.append(fusion_scores(model, enc.foil_tokens[chunk].to(device, torch.float32),
                                             enc.foil_mask[chunk].to(device), image, enc.frames).cpu())  # fmt: skip
        out["motion_fusion"] = 100 * (torch.cat(true_scores) > torch.cat(foil_scores)).float().mean().item()
    return out


def pair_scorer(loaded: LoadedModel, enc: EncodedSplit, device: torch.device) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Fusion score of (image, caption) index pairs: the rank head after retrieval fine-tuning, the
    ITM match logit otherwise (zero-shot from a pre-training checkpoint)."""
    model = loaded.model

    @torch.no_grad()
    def score(image_idx: torch.Tensor, text_idx: torch.Tensor) -> torch.Tensor:
        images = enc.image_tokens.index_select(0, image_idx.cpu()).to(device, torch.float32)
        texts = enc.text_tokens.index_select(0, text_idx.cpu()).to(device, torch.float32)
        mask = enc.text_mask.index_select(0, text_idx.cpu()).to(device)
        return fusion_scores(model, texts, mask, images, enc.frames).cpu()

    return score


def eval_retrieval(
    loaded: LoadedModel, data: EvalData, batch_size: int, device: torch.device, progress, rerank: int | str
) -> EvalReport:
    from scl_cli.evaluation.retrieval_search import recall_at_k_two_stage, two_stage_scores

    enc = encode_split(loaded, data, batch_size, device, progress)
    k: int | str | None = rerank
    scorer = pair_scorer(loaded, enc, device)
    scores = two_stage_scores(enc.image_itc, enc.text_itc, scorer if rerank != 0 else None, k,
                              progress=lambda stage, done, total: progress(stage, done))  # fmt: skip
    metrics = recall_at_k_two_stage(scores, enc.text_to_image)
    n_images = len(enc.image_itc)
    baseline = {"ir_r1": 100 / n_images, "tr_r1": 100 / n_images}  # chance level
    if enc.frames > 1:  # clips: text-to-video and video-to-text, as the video papers name them
        metrics = {_VIDEO_NAMES.get(k, k): v for k, v in metrics.items()}
        baseline = {_VIDEO_NAMES.get(k, k): v for k, v in baseline.items()}
    if enc.foil_itc is not None:
        metrics |= motion_foil_rates(loaded, enc, device, fusion=rerank != 0)
        baseline |= {"motion_itc": 50.0, **({"motion_fusion": 50.0} if rerank != 0 else {})}
    details = {"images": n_images, "captions": len(enc.text_itc), "rerank": rerank, "frames": enc.frames,
               "scorer": "rank head" if hasattr(loaded.model, "rank_head") else "ITM match logit"}  # fmt: skip
    return EvalReport("retrieval", "", data.dataset, data.split, n_images, 0.0, metrics, baseline, details)


_VIDEO_NAMES = {"ir_r1": "t2v_r1", "ir_r5": "t2v_r5", "ir_r10": "t2v_r10",
                "tr_r1": "v2t_r1", "tr_r5": "v2t_r5", "tr_r10": "v2t_r10"}  # fmt: skip


def evaluate(
    task: str,
    ckpt: Path,
    data: str | None = None,
    split: str | None = None,
    rerank: int | str | None = None,
    batch_size: int = 32,
    device: str = "auto",
    progress: Callable[[str, int, int], None] | None = None,
) -> EvalReport:
    """Evaluate checkpoint `ckpt` on `task`; see the module docstring."""
    if task not in TASKS:
        raise UsageError(f"unknown task '{task}' (known: {', '.join(TASKS)})")
    started = time.perf_counter()
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))
    loaded = load_model(ckpt)
    loaded.model.to(dev).eval()
    where = resolve_data(loaded.config, data, split, task)
    report_progress = (lambda stage, done: progress(stage, done, None)) if progress else (lambda stage, done: None)
    with torch.no_grad():
        if task == "vqa":
            report = eval_vqa(loaded, where, batch_size, dev, report_progress)
        elif task == "nlvr2":
            report = eval_nlvr2(loaded, where, batch_size, dev, report_progress)
        else:
            saved_task = (loaded.config.get("recipe") or {}).get("task") or {}
            k = rerank if rerank is not None else saved_task.get("rerank", 128)
            report = eval_retrieval(loaded, where, batch_size, dev, report_progress, k)
    report.checkpoint = str(loaded.config.get("checkpoint", ckpt))
    report.seconds = time.perf_counter() - started
    return report

