"""Steps whose loss or gradient is not finite: skipped on the device, counted, rolled back from.

- **Skip.** After the backward the trainer asks `flag(loss, grad_norm)` for a 0-d device bool
  (all-reduced in distributed runs, so every rank agrees). The optimizer step then leaves the
  weights and the AdamW state (moments and step count) exactly as they were when the flag is set:
  the fused AdamW reads it as its `found_inf` (no host sync; CUDA's default optimizer); a non-fused
  optimizer reads it on the host (free on CPU, where it is the default). A skipped step still
  counts: its batches are consumed and the step number and learning-rate schedule move on. Under
  fp16 the GradScaler already skips steps whose gradients overflow and lowers its scale; there
  only a non-finite *loss* counts towards a roll-back.
- **Count.** The flags stay on the device until the trainer's next host sync (a logged step or a
  checkpoint), which reads them with the window's metrics in one transfer (`absorb`).
- **Roll back.** When `rollback_after` (K) flags in a row are set, the run goes back to the newest
  checkpoint written before the first of them, exactly as `--resume` would (weights, optimizer,
  schedule, RNG, data position), multiplies the learning rate by `rollback_lr_factor`, and goes
  on, warning what it did. The next roll-back after `max_rollbacks` stops the run (`TrainingError`).
  The guard's counters and the lowered learning rate are part of every later checkpoint, so a run
  resumed after a roll-back continues exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from scl_cli.errors import TrainingError
from scl_cli.io.checkpoints import list_checkpoints


class NonFiniteGuard:
    def __init__(self, rollback_after: int, lr_factor: float, max_rollbacks: int, distributed: bool = False,
                 loss_only: bool = False) -> None:  # fmt: skip
        self.rollback_after = rollback_after
        self.lr_factor = lr_factor
        self.max_rollbacks = max_rollbacks
        self.distributed = distributed
        self.loss_only = loss_only  # fp16: the GradScaler owns gradient overflow
        self._pending: list[tuple[int, torch.Tensor]] = []  # (step, device flag) not read yet
        # host state, exact after every `absorb`; saved in checkpoints
        self.streak = 0  # non-finite steps in a row up to the last absorbed step
        self.skipped = 0  # all skipped steps of the run
        self.rollbacks = 0
        self.lr_scale = 1.0
        self.triggered_at: int | None = None  # step at which the streak reached `rollback_after`

    # ------------------------------------------------------------------ on the device
    def flag(self, loss: torch.Tensor, grad_norm: torch.Tensor | None) -> torch.Tensor:
        """0-d bool on the loss's device: this step's loss (or gradient norm) is not finite."""
        bad = ~torch.isfinite(loss.detach().float())
        if grad_norm is not None and not self.loss_only:
            bad = bad | ~torch.isfinite(grad_norm.detach().float())
        if self.distributed:
            import torch.distributed as dist

            as_int = bad.to(torch.int32)
            dist.all_reduce(as_int, op=dist.ReduceOp.MAX)
            bad = as_int.bool()
        return bad

    def optimizer_step(self, optimizer: torch.optim.Optimizer, scaler: Any, bad: torch.Tensor) -> None:
        """Step the optimizer unless `bad` (see the module docstring for how each path skips)."""
        if scaler is not None:
            scaler.step(optimizer)  # skips non-finite gradients itself (one host read, its own)
            scaler.update()
            return
        if optimizer.defaults.get("fused"):
            optimizer.found_inf = bad.float()
            try:
                optimizer.step()
            finally:
                optimizer.__dict__.pop("found_inf", None)
        elif not bool(bad):  # a host read: free on CPU; non-fused CUDA optimizers only
            optimizer.step()
        else:
            optimizer._opt_called = True  # skipped on purpose: the scheduler need not warn about order

    def record(self, step: int, bad: torch.Tensor) -> None:
        self._pending.append((step, bad))

    def pending(self) -> list[torch.Tensor]:
        """The unread flags, to read with the next host transfer (then `absorb` their values)."""
        return [flag for _, flag in self._pending]

    # ------------------------------------------------------------------ on the host
    def absorb(self, values: list[float] | None = None) -> None:
        """Take the host values of `pending()` (read them now when not given: a host sync)."""
        if values is None:
            values = torch.stack(self.pending()).float().tolist() if self._pending else []
        for (step, _), value in zip(self._pending, values, strict=True):
            if value:
                self.skipped += 1
                self.streak += 1
                if self.rollback_after and self.streak == self.rollback_after and self.triggered_at is None:
                    self.triggered_at = step
            else:
                self.streak = 0
        self._pending = []

    def rollback_target(self, run_dir: Path) -> Path | None:
        """The checkpoint to go back to when a roll-back is due (after `absorb`), else None.
        `TrainingError` when none is left or the roll-backs are used up."""
        if self.triggered_at is None:
            return None
        first_bad = self.triggered_at - self.rollback_after + 1
        advice = ("lower optim.lr, set optim.grad_clip, prefer bf16 to fp16, or look for bad data around "
                  f"step {first_bad}")  # fmt: skip
        if self.rollbacks >= self.max_rollbacks:
            raise TrainingError(
                f"step {self.triggered_at}: {self.rollback_after} steps in a row with a non-finite loss or "
                f"gradient after {self.rollbacks} roll-back(s) (learning rate now x{self.lr_scale:g}): the run "
                f"stops — {advice}"
            )
        before = [p for p in list_checkpoints(run_dir) if int(p.name.split("-")[1]) < first_bad]
        if not before:
            raise TrainingError(
                f"step {self.triggered_at}: {self.rollback_after} steps in a row with a non-finite loss or "
                f"gradient, and no checkpoint from before step {first_bad} to roll back to — {advice} "
                "(or write checkpoints more often: output.checkpoint_every)"
            )
        return before[-1]

    def rolled_back(self) -> float:
        """Count a roll-back; returns the new learning-rate scale (relative to the recipe's)."""
        self.rollbacks += 1
        self.lr_scale *= self.lr_factor
        self.streak, self.triggered_at, self._pending = 0, None, []
        return self.lr_scale

    def metrics(self) -> dict[str, float]:
        out = {"skipped_steps_total": float(self.skipped)}
        if self.rollbacks:
            out.update(rollbacks=float(self.rollbacks), lr_scale=self.lr_scale)
        return out

    def state_dict(self) -> dict[str, Any]:
        """Call after `absorb` (the pending flags are not part of it)."""
        return {"streak": self.streak, "skipped": self.skipped, "rollbacks": self.rollbacks,
                "lr_scale": self.lr_scale, "triggered_at": self.triggered_at}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.streak = int(state.get("streak", 0))
        self.skipped = int(state.get("skipped", 0))
        self.rollbacks = int(state.get("rollbacks", 0))
        self.lr_scale = float(state.get("lr_scale", 1.0))
        self.triggered_at = state.get("triggered_at")


def scale_learning_rate(training_state: dict[str, Any], factor: float) -> dict[str, Any]:
    """A training state whose learning rates (every group's peak and current rate, the schedule's
    base rates) are multiplied by `factor`: what a roll-back loads."""
    scheduler = dict(training_state["scheduler"])
    scheduler["base_lrs"] = [lr * factor for lr in scheduler["base_lrs"]]
    if "_last_lr" in scheduler:
        scheduler["_last_lr"] = [lr * factor for lr in scheduler["_last_lr"]]
    optimizer = dict(training_state["optimizer"])
    groups = []
    for group in optimizer["param_groups"]:
        group = dict(group)
        for key in ("lr", "initial_lr"):
            if key in group:
                group[key] = group[key] * factor
        groups.append(group)
    optimizer["param_groups"] = groups
    return {**training_state, "scheduler": scheduler, "optimizer": optimizer}
