"""One training forward (pre-training and fine-tuning alike): shared passes, every enabled
objective, the weighted sum.

Wrapping the step in a module gives DDP/FSDP one `forward` to hook into, whatever objectives
the recipe enables; the trainer only calls it and backpropagates `total`.

Randomness (masks, ITM negatives) comes from `StepRandom(seed, draws)`, where `draws` counts the
micro-batches this module has run: the same on every rank, and restored on resume from the
trainer's data position (`draws = micro_batches`).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.profiler import record_function

from scl_cli.config.recipe import MaskingConfig, Recipe
from scl_cli.distributed import DistInfo, dist_info
from scl_cli.model import SCLModel
from scl_cli.objectives.context import StepContext
from scl_cli.objectives.masking import StepRandom, TextSpec
from scl_cli.objectives.registry import Objective, build_objectives
from scl_cli.training.parallel import transformer_layers
from scl_cli.training.runtime import Runtime


class TrainStep(nn.Module):
    def __init__(
        self,
        model: SCLModel,
        objectives: dict[str, Objective],
        masking: MaskingConfig,
        spec: TextSpec,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.model = model
        self.objectives = objectives
        self.masking = masking
        self.spec = spec
        self.seed = seed
        self.draws = 0  # micro-batches run so far: the position in the random stream
        # Set by the run when its data mixes images and clips: the logs then split the loss by media.
        self.mixed_media = False
        # Logged on clip batches only (zeros on image batches of a mixed run; the trainer's `_flush`
        # turns their window sums into means over clip batches).
        self.clip_only_logs = frozenset(
            f"{name}/{key}" for name, objective in objectives.items() for key in objective.clip_logs()
        )

    def _full_width(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The batch with its captions padded back to max_len (`data.pad_to_multiple`): every process
        then gathers masked-word features of one width."""
        width = self.model.config.text.max_len
        missing = width - batch["text_ids"].shape[1]
        if missing <= 0:
            return batch
        return {
            **batch,
            "text_ids": nn.functional.pad(batch["text_ids"], (0, missing), value=self.spec.pad_id),
            "text_mask": nn.functional.pad(batch["text_mask"], (0, missing), value=0),
        }

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Returns `total` (weighted sum, with gradient) and detached per-objective values:
        `NAME` for each loss and `NAME/extra` for what an objective reports besides."""
        device, rows = batch["text_ids"].device, batch["text_ids"].shape[0]
        # Meta tensors (shape-only dry runs) never communicate: they run as one process.
        info = dist_info() if device.type != "meta" else DistInfo()
        if info.world_size > 1:
            batch = self._full_width(batch)
        rnd = StepRandom(self.seed, self.draws, device, rows, info.rank, info.world_size)
        self.draws += 1
        declared = [objective.encodings() for objective in self.objectives.values()]
        ctx = StepContext(
            self.model, batch, self.masking, self.spec, rnd,
            texts=tuple(v for texts, _ in declared for v in texts),
            images=tuple(v for _, images in declared for v in images),
        )  # fmt: skip
        for name, objective in self.objectives.items():
            with record_function(f"scl:plan:{name}"):
                objective.plan(ctx)
        ctx.run_fusion()
        total = torch.zeros((), device=ctx.device)
        logs: dict[str, torch.Tensor] = {}
        for name, objective in self.objectives.items():
            with record_function(f"scl:loss:{name}"):
                out = objective.loss(ctx)
            loss = out.pop("loss")
            total = total + objective.settings.weight * loss
            logs[name] = loss.detach()
            logs.update({f"{name}/{key}": value for key, value in out.items()})
        logs["total"] = total
        if self.mixed_media:
            # Window sums of these, divided by the video share, give each media's mean loss
            # (the trainer's `_flush`); present on every step so every rank logs the same keys.
            video = float(batch["images"].shape[1] > 1)
            logs["video_batches"] = torch.tensor(video, device=ctx.device)
            logs["loss_video"] = total.detach() * video
            logs["loss_image"] = total.detach() * (1.0 - video)
            for key in self.clip_only_logs:
                logs.setdefault(key, torch.zeros((), device=ctx.device))
        return logs


def build_train_step(recipe: Recipe, model: SCLModel, spec: TextSpec, runtime: Runtime) -> TrainStep:
    """Apply the topology's speed options to `model` and wrap it with the recipe's enabled objectives."""
    model.to(runtime.device)
    if recipe.topology.activation_checkpointing:
        model.set_gradient_checkpointing(True)
    if recipe.topology.compile:
        for layer in transformer_layers(model):
            layer.compile(backend=recipe.topology.compile_backend)
    objectives = build_objectives(recipe.objectives)
    return TrainStep(model, objectives, recipe.masking, spec.to(runtime.device), seed=recipe.optim.seed)
