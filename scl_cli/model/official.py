"""The paper's published checkpoints in our layout: the one place that knows the official key names.

The published implementation (IIGROUP/SCL, a PyTorch Lightning module built on METER) names its
parts `vision_transformer.visual.*` (CLIP ViT), `text_transformer.*` (RoBERTa),
`cross_modal_{text,image}_layers.N.*` (BERT cross layers), `*_pooler`, `itm_score`, `mlm_score`,
`vision_proj` / `language_proj` (ITC) and `cl_temp`. Below each of them maps to one of ours by a
prefix rename; the inner names are the same. Computation matches too (CLIP blocks, post-LN BERT
cross layers with self-attention, cross-attention, feed-forward; ITC projections on the class
tokens after the fusion-space Linear and before the token-type embedding), LayerNorm eps included:
the fusion layers and the MLM transform use eps 1e-12 like the official ones (the default of the
RobertaConfig they are built from; `model.fusion.layer_norm_eps`); RoBERTa, the CLIP ViT and
the ITC projections use 1e-05, as published.

Everything here works on shapes (`plan_official`) so that a paper-size key list is checked without
allocating it; `convert_official_state_dict` applies the plan to tensors.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from scl_cli.config.recipe import FusionConfig, ModelConfig, TextConfig, VisionConfig
from scl_cli.errors import CheckpointError
from scl_cli.model.weights.report import LoadReport, format_keys
from scl_cli.model.weights.roberta import slice_positions

OFFICIAL_TOKENIZER = "FacebookAI/roberta-base"
OFFICIAL_PAD_ID = 1  # RoBERTa's <pad>
HEAD_DIM = 64  # heads = width // 64, the convention of CLIP, RoBERTa-base and METER

# (official, ours): a name ending in "." is a prefix, any other an exact key. First match wins.
RENAMES: tuple[tuple[str, str], ...] = (
    ("vision_transformer.visual.transformer.resblocks.", "vision.blocks."),
    ("vision_transformer.visual.visual_mask_token", "vision.mask_token"),
    ("vision_transformer.visual.", "vision."),
    ("text_transformer.", "text."),
    ("cross_modal_text_transform.", "text_transform."),
    ("cross_modal_image_transform.", "image_transform."),
    ("token_type_embeddings.", "token_type_embeddings."),
    ("cross_modal_text_layers.", "fusion.text_layers."),
    ("cross_modal_image_layers.", "fusion.image_layers."),
    ("cross_modal_text_pooler.", "text_pooler."),
    ("cross_modal_image_pooler.", "image_pooler."),
    ("itm_score.", "itm_head."),
    ("mlm_score.", "mlm_head."),
    ("language_proj.", "itc_text_proj."),
    ("vision_proj.", "itc_image_proj."),
    ("cl_temp", "itc_temperature"),
)
# Fine-tuned heads: kept under the names the fine-tuning code uses (same inner names and indices).
FINETUNE_HEADS: tuple[tuple[str, str], ...] = (
    ("vqa_classifier.", "vqa_head."),
    ("nlvr2_classifier.", "nlvr2_head."),
    ("rank_output.", "rank_head."),
)
_MAE = "MAE pixel decoder; unused by pre-training"
_OLD_BUFFER = "buffer saved by older transformers versions"
IGNORED: tuple[tuple[str, str], ...] = (
    ("text_transformer.pooler.", "RoBERTa's own pooler; unused (the fusion poolers replace it)"),
    ("text_transformer.embeddings.position_ids", _OLD_BUFFER),
    ("text_transformer.embeddings.token_type_ids", _OLD_BUFFER),
    ("vision_transformer.mask_token", _MAE),
    ("vision_transformer.decoder_", _MAE),
    ("vision_transformer.visual.proj", "CLIP's joint-space projection; unused"),
)
# Ours only, or absent from checkpoints fine-tuned without the objective: start from initialisation.
_NEW_OK = {
    "vision.temporal_embedding": "ours only (video frames); zeros",
}
_HEADS_OK = ("itm_head.", "mlm_head.", "itc_text_proj.", "itc_image_proj.", "itc_temperature")
_TEXT_POSITIONS = "text.embeddings.position_embeddings.weight"
_TOKEN_TYPES = "token_type_embeddings.weight"


def _match(key: str, rules: Sequence[tuple[str, str]]) -> tuple[str, str] | None:
    for theirs, value in rules:
        if key == theirs or (theirs.endswith(".") or theirs.endswith("_")) and key.startswith(theirs):
            return theirs, value
    return None


def official_name(key: str) -> tuple[str, str | None]:
    """Classify one official key: ("mapped", ours), ("head", ours), ("ignored", reason) or ("unmapped", None)."""
    ignored = _match(key, IGNORED)
    if ignored is not None:
        return "ignored", ignored[1]
    for kind, rules in (("mapped", RENAMES), ("head", FINETUNE_HEADS)):
        found = _match(key, rules)
        if found is not None:
            theirs, ours = found
            return kind, ours + key[len(theirs) :] if theirs.endswith(".") else ours
    return "unmapped", None


def released_name(ours: str) -> str:
    """The published implementation's name for one of our parameter names (the renames above,
    reversed). A parameter it does not have (`vision.temporal_embedding`) keeps our inner name under
    the mapped prefix; a name outside every prefix is returned as it is."""
    for theirs, mine in (*RENAMES, *FINETUNE_HEADS):
        if mine.endswith("."):
            if ours.startswith(mine):
                return theirs + ours[len(mine) :]
        elif ours == mine:
            return theirs
    return ours


# ----------------------------------------------------------------------------- report
@dataclass
class ConvertReport(LoadReport):
    """A LoadReport for a whole published checkpoint, plus what conversion inferred.

    heads: official key -> our key of fine-tuned heads (kept in the converted state dict, not part of
    `SCLModel`); config / vocab_size / pad_token_id: the model the checkpoint describes.
    """

    heads: dict[str, str] = field(default_factory=dict)
    config: ModelConfig | None = None
    vocab_size: int = 0
    pad_token_id: int = OFFICIAL_PAD_ID

    def rows(self, every_key: bool = False) -> list[list[Any]]:
        """Table rows [official, scl, tensors, note], grouped by module unless `every_key`."""
        groups: dict[tuple[str, str, str], int] = {}

        def add(theirs: str, ours: str, note: str) -> None:
            group = (theirs, ours, note) if every_key else (_group(theirs), _group(ours), note)
            groups[group] = groups.get(group, 0) + 1

        for theirs, ours in self.mapped.items():
            add(theirs, ours, "")
        for theirs, ours in self.heads.items():
            add(theirs, ours, "fine-tuned head (not part of SCLModel)")
        for theirs, reason in self.ignored.items():
            add(theirs, "(ignored)", reason)
        for ours, reason in self.new.items():
            add("(none)", ours, f"new: {reason}")
        return [[theirs, ours, n, note] for (theirs, ours, note), n in groups.items()]

    def counts(self) -> dict[str, int]:
        return {
            "mapped": len(self.mapped),
            "fine-tuned heads": len(self.heads),
            "ignored": len(self.ignored),
            "new": len(self.new),
        }

    def as_dict(self) -> dict[str, Any]:
        """Every key and what became of it (written next to a converted checkpoint)."""
        return {
            "source": self.source,
            "counts": self.counts(),
            "mapped": self.mapped,
            "fine_tuned_heads": self.heads,
            "ignored": self.ignored,
            "new": self.new,
            "notes": self.notes,
        }


def _group(key: str) -> str:
    """`text_transformer.encoder.layer.3.output.dense.weight` -> `text_transformer.encoder.*`: the key
    up to the component after its rename prefix, indices collapsed."""
    for theirs, ours in (*IGNORED, *RENAMES, *FINETUNE_HEADS):
        for prefix in (theirs, ours):
            if prefix.endswith((".", "_")) and key.startswith(prefix):
                rest = key[len(prefix) :].split(".")
                if rest[0].isdigit() or rest[0] in ("weight", "bias"):
                    return prefix + "*"
                return prefix + rest[0] + (".*" if len(rest) > 1 else "")
    return key


# ----------------------------------------------------------------------------- config inference
def infer_model_config(shapes: Mapping[str, Sequence[int]], max_len: int = 50) -> tuple[ModelConfig, int]:
    """The ModelConfig and vocabulary size an official state dict describes (names -> shapes).

    Widths, depths, feed-forward ratios, patch size, image size (from the position grid), vocabulary
    and ITC size come from the shapes; heads follow the 64-dimension convention. `max_len` (tokens per
    caption) is not stored in the checkpoint: the paper's 50 by default.
    """

    def shape(key: str) -> Sequence[int]:
        if key not in shapes:
            raise CheckpointError(f"not an SCL checkpoint: it has no `{key}`")
        return list(shapes[key])

    def depth(prefix: str) -> int:
        found = {int(m.group(1)) for k in shapes if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
        if not found or found != set(range(len(found))):
            raise CheckpointError(f"not an SCL checkpoint: layers {sorted(found)} under `{prefix}`")
        return len(found)

    def heads(width: int, where: str) -> int:
        if width % HEAD_DIM:
            raise CheckpointError(
                f"{where} width {width} is not a multiple of {HEAD_DIM}: cannot infer heads"
            )
        return width // HEAD_DIM

    v = "vision_transformer.visual."
    v_width = shape(v + "class_embedding")[0]
    patch = shape(v + "conv1.weight")[-1]
    rows = shape(v + "positional_embedding")[0]
    grid = math.isqrt(rows - 1)
    if grid * grid != rows - 1:
        raise CheckpointError(f"{v}positional_embedding has {rows - 1} patch rows, not a square grid")
    vision = VisionConfig(
        image_size=grid * patch,
        patch_size=patch,
        width=v_width,
        layers=depth(v + "transformer.resblocks."),
        heads=heads(v_width, "vision"),
        mlp_ratio=shape(v + "transformer.resblocks.0.mlp.c_fc.weight")[0] / v_width,
    )
    vocab, t_width = shape("text_transformer.embeddings.word_embeddings.weight")
    text = TextConfig(
        width=t_width,
        layers=depth("text_transformer.encoder.layer."),
        heads=heads(t_width, "text"),
        mlp_ratio=shape("text_transformer.encoder.layer.0.intermediate.dense.weight")[0] / t_width,
        max_len=max_len,
        vocab_size=vocab,
        tokenizer=OFFICIAL_TOKENIZER,
        weights=OFFICIAL_TOKENIZER,
    )
    f_width = shape("cross_modal_text_transform.weight")[0]
    f_layers = depth("cross_modal_text_layers.")
    if depth("cross_modal_image_layers.") != f_layers:
        raise CheckpointError("not an SCL checkpoint: text and image fusion stacks differ in depth")
    fusion = FusionConfig(
        width=f_width,
        layers=f_layers,
        heads=heads(f_width, "fusion"),
        mlp_ratio=shape("cross_modal_text_layers.0.intermediate.dense.weight")[0] / f_width,
    )
    itc_dim = list(shapes["vision_proj.3.weight"])[0] if "vision_proj.3.weight" in shapes else 512
    cfg = ModelConfig(init="random", vision=vision, text=text, fusion=fusion, itc_dim=itc_dim)
    return cfg, vocab


# ----------------------------------------------------------------------------- the plan
@dataclass
class OfficialPlan:
    """How an official state dict becomes ours: `renames` official -> ours, `targets` our key -> shape
    (every key of the SCLModel the checkpoint describes, plus fine-tuned heads), and the report."""

    renames: dict[str, str]
    targets: dict[str, tuple[int, ...]]
    report: ConvertReport


def plan_official(
    shapes: Mapping[str, Sequence[int]], source: str = "official checkpoint", max_len: int = 50
) -> OfficialPlan:
    """Map every official key (names -> shapes; no tensors needed) or raise `CheckpointError` listing
    the keys it cannot place, the shapes that do not fit and the weights that are missing."""
    from scl_cli.model.scl_model import SCLModel

    report = ConvertReport("official checkpoint", source, "official SCL (PyTorch Lightning)")
    renames: dict[str, str] = {}
    unplaced = []
    for key in shapes:
        kind, value = official_name(key)
        if kind == "ignored":
            report.ignored[key] = str(value)
        elif kind == "unmapped":
            unplaced.append(key)
        else:
            renames[key] = str(value)
            (report.mapped if kind == "mapped" else report.heads)[key] = str(value)
    if unplaced:
        raise CheckpointError(f"{source}: cannot place {len(unplaced)} key(s): {format_keys(unplaced)}")

    cfg, vocab = infer_model_config(shapes, max_len)
    report.config, report.vocab_size = cfg, vocab
    with torch.device("meta"):
        model = SCLModel(cfg, vocab, OFFICIAL_PAD_ID)
    own = {k: tuple(t.shape) for k, t in model.state_dict().items()}

    targets: dict[str, tuple[int, ...]] = {}
    mismatched = []
    for theirs, ours in renames.items():
        shape = tuple(shapes[theirs])
        if ours in report.heads.values():
            targets[ours] = shape
            continue
        expected = own[ours] if ours in own else None
        if ours == _TEXT_POSITIONS and expected is not None and shape[0] > expected[0]:
            report.notes.append(
                f"RoBERTa position table cut from {shape[0]} to {expected[0]} rows (max_len {max_len})"
            )
            shape = (expected[0], *shape[1:])
        if ours == _TOKEN_TYPES and expected is not None and shape[0] == 3 and shape[1:] == expected[1:]:
            report.notes.append("token_type_embeddings has 3 rows (NLVR2: the third is the second image)")
            expected = shape
        if expected is None or shape != expected:
            mismatched.append(
                f"{theirs} {list(shape)} -> {ours} {list(expected) if expected else '(no such weight)'}"
            )
        targets[ours] = shape
    if mismatched:
        raise CheckpointError(
            f"{source}: weights that do not fit the inferred model: {format_keys(mismatched)}"
        )

    lacking = []
    for ours, shape in own.items():
        if ours in targets:
            continue
        if ours in _NEW_OK:
            report.new[ours] = _NEW_OK[ours]
        elif ours.startswith(_HEADS_OK):
            report.new[ours] = "absent (fine-tuned without this objective); fresh initialisation"
        else:
            lacking.append(ours)
            continue
        targets[ours] = shape
    if lacking:
        raise CheckpointError(
            f"{source}: the checkpoint lacks weights the model needs: {format_keys(lacking)}"
        )
    return OfficialPlan(renames, targets, report)


def convert_official_state_dict(
    state: Mapping[str, Tensor], source: str = "official checkpoint", max_len: int = 50
) -> tuple[dict[str, Tensor], ConvertReport]:
    """An official state dict as ours: every `SCLModel` key (for `SCLModel(report.config,
    report.vocab_size, report.pad_token_id)`) plus fine-tuned heads (`vqa_head.*`, `nlvr2_head.*`,
    `rank_head.*`). Weights the checkpoint lacks (temporal embedding; heads of objectives a fine-tuned
    checkpoint was not trained with) get the model's own initialisation."""
    plan = plan_official({k: tuple(v.shape) for k, v in state.items()}, source, max_len)
    out: dict[str, Tensor] = {}
    for theirs, ours in plan.renames.items():
        tensor = state[theirs].detach()
        if ours == _TEXT_POSITIONS:
            tensor = slice_positions(tensor, plan.targets[ours][0], source)
        out[ours] = tensor.contiguous()
    missing = [k for k in plan.targets if k not in out]
    if missing:
        fresh = _fresh_weights(plan.report, missing)
        out.update({k: fresh[k] for k in missing})
    return out, plan.report


def _fresh_weights(report: ConvertReport, keys: list[str]) -> dict[str, Tensor]:
    """Initial values of `keys`: zeros for the temporal embedding, else a seeded fresh SCLModel's."""
    if all(k in _NEW_OK for k in keys):
        assert report.config is not None
        return {k: torch.zeros(report.config.vision.max_frames, report.config.vision.width) for k in keys}
    from scl_cli.model.scl_model import SCLModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = SCLModel(report.config, report.vocab_size, report.pad_token_id)  # type: ignore[arg-type]
    return {k: t.detach().clone() for k, t in model.state_dict().items() if k in keys}
