"""The recipe: one pydantic model per TOML table. Every default lives here, once.

`scl recipe show` prints the resolved recipe; everything else reads these objects. Nothing here
imports torch: validating a recipe is instant. Objective tables are validated by the settings
models of `config.objectives`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from scl_cli.config.location import Location
from scl_cli.config.objectives import validate_objectives


class Section(BaseModel):
    """Base for every table: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# ----------------------------------------------------------------------------- data
class DataConfig(Section):
    root: Location = Field(
        Path("data"),
        description="Folder or URL (https://, s3://, gs://, any fsspec protocol) holding prepared data sets, "
        "one sub-folder per name. Shards behind a URL are streamed.",
    )
    train: list[str] = Field(
        ["shapes"],
        description="Pre-training data sets: names under data.root, or a data set's own folder or URL "
        "('NAME:GROUP' reads a manifest group such as 'shapes:clips').",
    )
    weights: list[float] | None = Field(None, description="Sampling weight per data set (default: by size).")
    split: str = Field("train", description="Split read for training.")
    num_workers: int = Field(2, ge=0, description="Loader worker processes per device.")
    shuffle_buffer: int = Field(1000, ge=1, description="Samples held in the shuffle buffer per worker.")
    augment: bool = Field(
        True, description="Random resized crop for training (no flips: they break left/right)."
    )
    crop_min_scale: float = Field(0.5, gt=0, le=1, description="Smallest crop area share of the random crop.")
    pad_to_multiple: int = Field(
        0,
        ge=0,
        description="0: every caption padded to model.text.max_len (fixed shapes, what torch.compile and "
        "CUDA graphs want). N: each pre-training batch padded only to its longest caption, rounded up to a "
        "multiple of N (fewer text tokens: the tiny recipe's step is 13% faster on CPU). The masks are "
        "the same either way. With several processes the step pads back to max_len, since masked-word "
        "features are gathered across processes at one width.",
    )
    num_frames: int = Field(
        4, ge=1, description="Frames sampled per video clip (one per equal segment); images are 1 frame."
    )
    max_bad_samples: float = Field(
        0.01,
        ge=0,
        le=1,
        description="Share of the samples read that may be skipped as undecodable (corrupt image, truncated "
        "shard, unreadable clip; counted per reason in the metrics) before the run stops (judged once 10 "
        "samples were skipped).",
    )
    read_retries: int = Field(
        5,
        ge=0,
        description="Retries of a failed read from a URL (exponential back-off from 0.25 s), counted "
        "in the metrics as read_retries; a shard still unreadable after them is skipped as bad samples.",
    )
    read_timeout: float = Field(60.0, gt=0, description="Seconds a read from a URL may wait for data.")
    cache_dir: Path | None = Field(
        None,
        description="Local folder keeping shards read from a URL, for the next epochs and runs "
        "(none: stream them again every epoch). Safe to share between loader workers, processes and runs.",
    )
    cache_size_gb: float = Field(
        50.0, gt=0, description="Most the shard cache holds; the least recently used shards go first."
    )

    @field_validator("train", mode="before")
    @classmethod
    def _split_names(cls, v: Any) -> Any:
        # `--set data.train=coco,vg` is the natural spelling on a command line.
        if isinstance(v, str):
            return [s.strip() for s in v.split(",") if s.strip()]
        return v

    @model_validator(mode="after")
    def _weights_match(self) -> DataConfig:
        if not self.train:
            raise ValueError("data.train names no data set")
        if self.weights is not None and len(self.weights) != len(self.train):
            raise ValueError(f"data.weights has {len(self.weights)} entries for {len(self.train)} data sets")
        return self


# ----------------------------------------------------------------------------- model
class VisionConfig(Section):
    image_size: int = Field(288, ge=8, description="Input side in pixels (the position grid follows it).")
    patch_size: int = Field(16, ge=1)
    stem: Literal["patch", "conv"] = Field(
        "patch",
        description="Patch embedding: 'patch' (CLIP's one convolution, kernel = stride = patch_size) or "
        "'conv' (stride-2 3x3 convolutions down to the patch grid, then a 1x1 projection; Xiao et al. 2021, "
        "for small ViTs trained from scratch; patch_size must be a power of two).",
    )
    width: int = Field(768, ge=8)
    layers: int = Field(11, ge=1, description="ViT blocks kept (the paper keeps 11 of CLIP's 12).")
    heads: int = Field(12, ge=1)
    mlp_ratio: float = Field(4.0, gt=0)
    max_frames: int = Field(8, ge=1, description="Size of the learned temporal embedding.")
    temporal_attention: bool = Field(False, description="Let patches attend across frames inside the ViT.")
    temporal_init: Literal["zeros", "normal"] = Field(
        "zeros",
        description="Initial temporal embedding. 'zeros': a clip starts out seen as independent frames (the "
        "start from CLIP weights, which know no time). 'normal': N(0, width^-0.5), like the position table; "
        "a model trained from scratch needs it, as from zeros a clip and its time reversal keep the same "
        "features and nothing learns the order of frames (shapes clips, issue 15).",
    )
    weights: str = Field(
        "vit_base_patch16_clip_224.openai",
        description="Initialisation when model.init = 'pretrained': timm name, CLIP file or local path.",
    )
    mask_token_std: float = Field(
        0.02,
        gt=0,
        description="Standard deviation of the local-SCL mask token's normal initialisation (the paper's "
        "code: 1.0, torch.randn).",
    )

    @model_validator(mode="after")
    def _divisible(self) -> VisionConfig:
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        if self.stem == "conv" and (self.patch_size < 2 or self.patch_size & (self.patch_size - 1)):
            raise ValueError(
                f"stem 'conv' needs a power-of-two patch_size of at least 2, got {self.patch_size}"
            )
        return self


class TextConfig(Section):
    width: int = Field(768, ge=8)
    layers: int = Field(12, ge=1)
    heads: int = Field(12, ge=1)
    mlp_ratio: float = Field(4.0, gt=0)
    max_len: int = Field(50, ge=4, description="Tokens per caption, special tokens included.")
    vocab_size: int | None = Field(None, description="Default: the tokenizer's vocabulary size.")
    tokenizer: str = Field(
        "dataset",
        description="'dataset' (tokenizer.json of the first training data set), a transformers name or a path.",
    )
    weights: str = Field(
        "FacebookAI/roberta-base", description="Initialisation when model.init = 'pretrained'."
    )

    @model_validator(mode="after")
    def _divisible(self) -> TextConfig:
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        return self


class FusionConfig(Section):
    width: int = Field(768, ge=8)
    layers: int = Field(6, ge=1, description="Co-attention layers per direction.")
    heads: int = Field(12, ge=1)
    mlp_ratio: float = Field(4.0, gt=0)
    dropout: float = Field(0.1, ge=0, lt=1)
    layer_norm_eps: float = Field(
        1e-12, gt=0, description="LayerNorm eps of the fusion layers and MLM head (the published model's)."
    )

    @model_validator(mode="after")
    def _divisible(self) -> FusionConfig:
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        return self


class ModelConfig(Section):
    init: Literal["random", "pretrained"] = Field(
        "pretrained", description="'pretrained' loads model.vision.weights and model.text.weights."
    )
    vision: VisionConfig = VisionConfig()
    text: TextConfig = TextConfig()
    fusion: FusionConfig = FusionConfig()
    itc_dim: int = Field(512, ge=1, description="Output size of the ITC projections.")
    itc_text_pool: Literal["cls", "mean"] = Field(
        "cls",
        description="Text feature for ITC: the class token (the paper) or the mean of the real tokens "
        "(for encoders trained from scratch, whose class token carries almost no content for hundreds of steps).",
    )
    tie_mlm_decoder: bool = Field(False, description="Share the MLM decoder with the word embeddings.")
    itc_init: Literal["bert", "pytorch"] = Field(
        "bert",
        description="Initialisation of the ITC projections: 'bert' (normal(0.02), zero bias, like the other "
        "new layers) or 'pytorch' (nn.Linear's default uniform, as the paper's code leaves them).",
    )


# ----------------------------------------------------------------------------- masking
class MaskingConfig(Section):
    mlm_prob: float = Field(0.15, gt=0, lt=1, description="MLM: share of words masked.")
    mlm_whole_word: bool = Field(
        True, description="MLM: pick whole words (a word-start token and the pieces after it), not tokens."
    )
    mlm_selection: Literal["bernoulli", "wwm_collator"] = Field(
        "bernoulli",
        description="MLM: 'bernoulli' picks each word (or token) with probability mlm_prob among the real, "
        "non-special tokens (transformers' DataCollatorForLanguageModeling today); 'wwm_collator' is "
        "transformers 4.6's DataCollatorForWholeWordMask as the paper's code runs it: round(mlm_prob x "
        "padded length) candidates (a token and the '##' pieces after it; with RoBERTa's tokenizer single "
        "tokens) drawn among all positions, padding and special tokens included, which are then dropped.",
    )
    mlm_mask_share: float = Field(0.8, ge=0, le=1, description="MLM: share of picked tokens set to <mask>.")
    mlm_random_share: float = Field(0.1, ge=0, le=1, description="MLM: share set to a random token.")
    scl_image_drop: float = Field(0.8, gt=0, lt=1, description="Global SCL: share of patches dropped.")
    scl_text_mask: float = Field(0.4, gt=0, lt=1, description="Global SCL: share of text positions masked.")
    scl_text_sampling: Literal["without_replacement", "with_replacement"] = Field(
        "without_replacement",
        description="SCL text mask: 'without_replacement' masks round(scl_text_mask x n) distinct "
        "positions of the n real words (at least one); 'with_replacement' draws int(scl_text_mask x n) + 1 "
        "positions with replacement, as the paper's code does (repeats mask fewer distinct positions).",
    )
    scl_local_image_mask: float = Field(
        0.3, gt=0, lt=1, description="Local SCL: share of patches replaced by the mask token."
    )
    patch_count: Literal["round", "floor"] = Field(
        "round",
        description="Patch counts of N patches: 'round' drops round(scl_image_drop x N) and masks "
        "round(scl_local_image_mask x N) (65 of 324 kept at 288 px); 'floor' keeps int(N x (1 - "
        "scl_image_drop)) and masks int(N x scl_local_image_mask), as the paper's code does (64 kept). At "
        "least one either way.",
    )

    @model_validator(mode="after")
    def _shares(self) -> MaskingConfig:
        if self.mlm_mask_share + self.mlm_random_share > 1:
            raise ValueError("mlm_mask_share + mlm_random_share exceeds 1")
        if self.mlm_selection == "wwm_collator" and not self.mlm_whole_word:
            raise ValueError(
                "mlm_selection = 'wwm_collator' always groups '##' pieces with the token before them: "
                "set mlm_whole_word = true, or mlm_selection = 'bernoulli' to pick single tokens"
            )
        return self


# ----------------------------------------------------------------------------- optim
class OptimConfig(Section):
    lr: float = Field(2e-5, gt=0, description="Learning rate of the unimodal encoders.")
    lr_mult_fusion: float = Field(5.0, gt=0, description="Multiplier for the fusion layers.")
    lr_mult_heads: float = Field(5.0, gt=0, description="Multiplier for the heads.")
    param_groups: Literal["scl", "paper"] = Field(
        "scl",
        description="Which parameters get which multiplier and weight decay. 'scl': encoders x1, fusion "
        "(fusion layers, transforms, token types, poolers) x lr_mult_fusion, heads (ITM, MLM, ITC "
        "projections and temperature, task heads) x lr_mult_heads; matrices decay, biases, norms and "
        "scalars do not. 'paper': the released code's set_schedule, by the paper's parameter names: x "
        "lr_mult_fusion for names containing 'cross_modal', x lr_mult_heads for the ITM, MLM, VQA and "
        "NLVR2 heads, the base rate for everything else (token types, ITC projections and temperature "
        "included); no weight decay only for names containing 'bias', 'LayerNorm.weight', "
        "'norm.weight', 'norm1.weight' or 'norm2.weight' (so CLIP's ln_* weights, the ITC projections' "
        "LayerNorm, the class embedding, the mask token and the temperature decay).",
    )
    weight_decay: float = Field(0.01, ge=0)
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = Field(1e-8, gt=0)
    warmup: float = Field(0.1, ge=0, description="Warm-up: a fraction of max_steps if < 1, else steps.")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="Where the linear decay ends.")
    max_steps: int = Field(100_000, ge=1)
    batch_size: int = Field(4096, ge=1, description="Global batch (all devices, after accumulation).")
    micro_batch_size: int | Literal["auto"] | None = Field(
        None,
        description="Per-device batch per forward pass; default: the global batch / devices. 'auto': on a "
        "CUDA device, the largest that fits (probed at the start, cached in output.dir); on CPU the default.",
    )
    grad_clip: float | None = Field(None, gt=0)
    seed: int = 0
    rollback_after: int = Field(
        10,
        ge=0,
        description="A step whose loss or gradient is not finite is skipped (weights and AdamW state "
        "unchanged); after this many in a row the run goes back to the last checkpoint before them and "
        "lowers the learning rate (0: never roll back).",
    )
    rollback_lr_factor: float = Field(
        0.5, gt=0, le=1, description="The learning rate is multiplied by this at each roll-back."
    )
    max_rollbacks: int = Field(3, ge=0, description="Roll-backs allowed; one more stops the run.")

    @field_validator("micro_batch_size", mode="before")
    @classmethod
    def _micro(cls, v: Any) -> Any:
        if v is None or v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
            return v
        raise ValueError("a positive integer or 'auto'")

    def warmup_steps(self) -> int:
        return int(self.warmup * self.max_steps) if self.warmup < 1 else int(self.warmup)


# ----------------------------------------------------------------------------- topology
class TopologyConfig(Section):
    nodes: int = Field(1, ge=1)
    devices_per_node: int = Field(1, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    strategy: Literal["ddp", "fsdp"] = "ddp"
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto",
        description="'auto': bf16 on GPUs that have it, else fp16 on CUDA; fp32 on CPU (where bf16 and "
        "fp16 also run, slowly: they rehearse a GPU run's mixed precision).",
    )
    compile: bool = Field(False, description="torch.compile each transformer layer (ViT, RoBERTa, fusion).")
    compile_backend: Literal["inductor", "aot_eager", "eager"] = Field(
        "inductor",
        description="torch.compile backend: 'inductor' generates kernels; 'aot_eager' traces forward and "
        "backward without code generation (finds graph breaks in seconds, e.g. on CPU).",
    )
    activation_checkpointing: bool = Field(
        False, description="Recompute layer activations in backward: less memory for larger batches."
    )
    collective_timeout: float = Field(
        1800.0,
        ge=1,
        description="Seconds a process waits in a collective (all-reduce, barrier) for the others "
        "before the run stops with an error naming the lost process (a node that died without closing its "
        "connections).",
    )
    rendezvous_timeout: float = Field(
        600.0, ge=1, description="Seconds each node of a multi-node run waits for the others to start."
    )

    @property
    def world_size(self) -> int:
        return self.nodes * self.devices_per_node


# ----------------------------------------------------------------------------- output / log
class OutputConfig(Section):
    dir: Path = Path("runs/scl")
    checkpoint_every: int = Field(
        1000, ge=1, description="Steps between checkpoints (one is always written at the end)."
    )
    keep_last: int = Field(3, ge=1, description="Checkpoints kept; older ones are deleted.")


class EvalConfig(Section):
    """Evaluation during training: zero-shot ITC retrieval both ways and ITM accuracy on held-out
    pairs, logged as `eval/...` in metrics.jsonl and TensorBoard; the best checkpoint by `best`
    is kept in RUN/best/."""

    every: int = Field(0, ge=0, description="Steps between evaluations (also at the end); 0 = none.")
    data: str | None = Field(
        None, description="Data set (NAME or NAME:GROUP); default: the first of data.train."
    )
    split: str = Field("val", description="Held-out split to evaluate on.")
    images: int = Field(256, ge=2, description="Images (or clips) of the split used, from its start.")
    best: str | None = Field(
        "eval/ir_r1",
        description="Metric whose best value keeps a copy in RUN/best/ (higher is better); none: off.",
    )
    pictures: bool = Field(
        True, description="Also log a retrieval contact sheet and an attention heat map (TensorBoard images)."
    )
    seed: int = Field(0, description="Seed of the ITM negatives (the same pairs at every evaluation).")


class LogConfig(Section):
    every: int = Field(10, ge=1, description="Steps between metric lines.")
    loggers: list[str] = Field(
        ["tensorboard"],
        description="Where metrics go besides RUN/metrics.jsonl (always written): entry points of the "
        "'scl_cli.loggers' group, e.g. 'tensorboard'.",
    )

    @model_validator(mode="before")
    @classmethod
    def _tensorboard_flag(cls, data: Any) -> Any:
        # Recipes (and checkpoints' saved recipes) from before `loggers` say `tensorboard = bool`.
        if isinstance(data, dict) and "tensorboard" in data:
            data = dict(data)
            on = data.pop("tensorboard")
            loggers = [n for n in data.get("loggers", ["tensorboard"]) if n != "tensorboard"]
            data["loggers"] = loggers + (["tensorboard"] if on else [])
        return data


# ----------------------------------------------------------------------------- fine-tuning task
class TaskConfig(Section):
    """What `scl finetune` trains and evaluates (pre-training recipes have no [task] table)."""

    name: Literal["vqa", "nlvr2", "retrieval"]
    dataset: str = Field(
        description="Data set under data.root, e.g. 'vqav2', 'nlvr2', 'f30k', 'coco', 'shapes'."
    )
    group: str = Field("splits", description="Manifest group of the splits ('nlvr2' for the shapes pairs).")
    train_split: str = "train"
    eval_split: str = Field("val", description="Split evaluated at the end of fine-tuning.")
    epochs: float | None = Field(
        None, gt=0, description="Sets optim.max_steps from the training split's size."
    )
    rerank: int = Field(128, ge=0, description="Retrieval: ITC candidates re-scored by the fusion rank head.")
    max_questions: int = Field(8, ge=1, description="VQA: questions per image in a training batch.")


# ----------------------------------------------------------------------------- the recipe
class Recipe(Section):
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    masking: MaskingConfig = MaskingConfig()
    objectives: dict[str, Any] = Field(default_factory=dict, validate_default=True)
    optim: OptimConfig = OptimConfig()
    topology: TopologyConfig = TopologyConfig()
    output: OutputConfig = OutputConfig()
    log: LogConfig = LogConfig()
    eval: EvalConfig = EvalConfig()
    task: TaskConfig | None = None

    @field_validator("objectives", mode="before")
    @classmethod
    def _objectives(cls, v: Any) -> Any:
        # Each objective validates its own table with the settings model it registered.
        return validate_objectives(v or {})

    def enabled_objectives(self) -> dict[str, Any]:
        return {name: s for name, s in self.objectives.items() if s.weight > 0}

    @model_validator(mode="after")
    def _batch(self) -> Recipe:
        world = self.topology.world_size
        if self.optim.batch_size % world:
            raise ValueError(f"optim.batch_size {self.optim.batch_size} is not divisible by {world} devices")
        per_device = self.optim.batch_size // world
        micro = self.micro_batch()
        if per_device % micro:
            raise ValueError(
                f"per-device batch {per_device} is not a multiple of optim.micro_batch_size {micro}"
            )
        if not self.enabled_objectives():
            raise ValueError("no objective has a weight above 0")
        if self.eval.every and self.topology.strategy == "fsdp":
            raise ValueError("eval.every: evaluation during training needs whole parameters on rank 0, "
                             "which strategy = 'fsdp' shards; set eval.every = 0 or strategy = 'ddp'")  # fmt: skip
        return self

    def accumulation_steps(self) -> int:
        return self.optim.batch_size // self.topology.world_size // self.micro_batch()

    def micro_batch(self) -> int:
        """The per-device micro-batch; `"auto"` reads as the default (the whole per-device batch)
        until the run resolves it on its device (`training.auto_batch`)."""
        micro = self.optim.micro_batch_size
        if micro is None or micro == "auto":
            return self.optim.batch_size // self.topology.world_size
        return micro
