"""The pre-training loop: accumulation, mixed precision, clipping, logging, checkpoints, resume."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from scl_cli.data.skips import SkipCounter
from scl_cli.reporting import Reporter
from scl_cli.training.guard import NonFiniteGuard, scale_learning_rate
from scl_cli.training.loggers import MetricsLogger
from scl_cli.training.parallel import StateIO
from scl_cli.training.preemption import StopRequest
from scl_cli.training.runtime import Runtime
from scl_cli.training.state import capture_rng_state, restore_rng_state


@dataclass
class TrainState:
    step: int = 0
    micro_batches: int = 0  # data position: micro-batches this process consumed


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    first_loss: float | None = None
    last_loss: float | None = None
    last_checkpoint: Path | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    stopped_by_signal: bool = False  # SIGTERM: stopped after `steps` with a checkpoint (training.preemption)


class Trainer:
    """Runs `step_module` (a TrainStep, possibly DDP/FSDP-wrapped) until `max_steps`.

    `save_fn(step, training_state)` writes a checkpoint (rank 0; every rank calls it); it is called
    every `checkpoint_every` steps, at the end, and when a one-process run is interrupted with
    Ctrl-C. `state_io` says how the optimizer state is saved and loaded (plain state dicts by
    default; full state dicts gathered from the shards under FSDP). The training state holds
    every rank's RNG state (`rng_ranks`), so each rank resumes its own random stream.

    `guard` skips steps whose loss or gradient is not finite (`training.guard`); to roll back it
    needs `reload(checkpoint) -> training state` (loads the weights, returns the state to load)
    and `rebatch(state, saved) -> batches` (the data stream from a training state's position).
    When the batches come through a `data.skips.SkipCounter`, undecodable samples the loader
    skipped are logged per reason and stop the run beyond `max_bad_samples` of those read.
    `stop` (a `training.preemption.StopRequest`): when any rank got SIGTERM, every rank ends after
    the same step, with a checkpoint.
    """

    def __init__(
        self,
        step_module: nn.Module,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        runtime: Runtime,
        *,
        max_steps: int,
        accumulation: int,
        grad_clip: float | None,
        log_every: int,
        checkpoint_every: int,
        save_fn,
        metrics: MetricsLogger,
        reporter: Reporter,
        state_io: StateIO | None = None,
        guard: NonFiniteGuard | None = None,
        reload=None,
        rebatch=None,
        max_bad_samples: float = 1.0,
        stop_at: int | None = None,
        evaluator=None,
        clip_only_logs: frozenset[str] = frozenset(),
        stop: StopRequest | None = None,
    ) -> None:
        self.step_module = step_module
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.rt = runtime
        self.max_steps = max_steps
        self.accumulation = accumulation
        self.grad_clip = grad_clip
        self.log_every = log_every
        self.checkpoint_every = checkpoint_every
        self.save_fn = save_fn
        self.metrics = metrics
        self.reporter = reporter
        self.state_io = state_io or StateIO()
        self.scaler = runtime.grad_scaler()
        self.guard = guard or NonFiniteGuard(0, 1.0, 0, runtime.distributed)
        self.guard.loss_only = self.scaler is not None
        self.reload, self.rebatch = reload, rebatch
        self.max_bad_samples = max_bad_samples
        self.evaluator = evaluator  # evaluation during training (`training.evaluator`), or None
        self.clip_only_logs = clip_only_logs  # logs of clip batches only (`TrainStep.clip_only_logs`)
        self.stop_at = max_steps if stop_at is None else min(stop_at, max_steps)  # the loop's end
        self.stop = stop
        self.skips: SkipCounter | None = None  # the stream's skipped-sample accounting, if it has one
        self.data_wait = 0.0  # seconds blocked waiting for the next batch since the last log
        self.samples_seen = 0  # samples of every rank since the last log (image rows of the batches)

    def training_state(self, state: TrainState) -> dict:
        """What a checkpoint needs to resume exactly; a collective in distributed runs (call it on
        every rank; only rank 0's result is complete)."""
        self.guard.absorb()  # saving syncs anyway; the guard's counts must be exact
        rng = capture_rng_state()
        out = {
            "optimizer": self.state_io.optimizer_state(self.optimizer),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng,
            "step": state.step,
            "micro_batches": state.micro_batches,
            "world_size": self.rt.world_size,
            "guard": self.guard.state_dict(),
        }
        skips = self.skips.state_dict() if self.skips is not None else None
        if skips is not None:
            out["data_skips"] = skips
        if self.rt.distributed:
            import torch.distributed as dist

            gathered = [None] * self.rt.world_size if self.rt.is_main else None
            dist.gather_object(rng, gathered, dst=0)
            out["rng_ranks"] = gathered or []
            if skips is not None:
                gathered = [None] * self.rt.world_size if self.rt.is_main else None
                dist.gather_object(skips, gathered, dst=0)
                out["data_skips_ranks"] = gathered or []
        if self.scaler is not None:
            out["scaler"] = self.scaler.state_dict()
        return out

    def load_training_state(self, saved: dict) -> TrainState:
        """Optimizer, scheduler and scaler state; see `restore_rng` for the random streams."""
        self.state_io.load_optimizer_state(self.optimizer, saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        if self.scaler is not None and "scaler" in saved:
            self.scaler.load_state_dict(saved["scaler"])
        self.guard.load_state_dict(saved.get("guard") or {})
        return TrainState(int(saved["step"]), int(saved["micro_batches"]))

    def restore_rng(self, saved: dict) -> None:
        """This rank's RNG states from a training state (rank 0's for one-process checkpoints).

        A checkpoint from another number of processes resumes, but not exactly: the data split
        and the random streams differ from the uninterrupted run's."""
        ranks = saved.get("rng_ranks") or []
        saved_world = int(saved.get("world_size", max(len(ranks), 1)))
        if saved_world != self.rt.world_size:
            self.reporter.warn(
                f"the checkpoint was written by {saved_world} process(es), this run has "
                f"{self.rt.world_size}: training continues, but not exactly as the original run would"
            )
        restore_rng_state(ranks[self.rt.rank] if self.rt.rank < len(ranks) else saved["rng"])

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # Non-blocking: from pinned loader memory (pin_memory on CUDA) the copy overlaps compute.
        return {k: v.to(self.rt.device, non_blocking=True) for k, v in batch.items()}

    def _next_batch(self, batches: Iterator[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        start = time.perf_counter()
        batch = next(batches)
        self.data_wait += time.perf_counter() - start
        return batch

    def _sync_context(self, last_micro: bool):
        # Reduce gradients across ranks on the last micro-batch of a step only: DDP's no_sync,
        # FSDP2's set_requires_gradient_sync (it then keeps unsharded gradients until the last).
        import contextlib

        if hasattr(self.step_module, "set_requires_gradient_sync"):
            self.step_module.set_requires_gradient_sync(last_micro)
        elif not last_micro and hasattr(self.step_module, "no_sync"):
            return self.step_module.no_sync()
        return contextlib.nullcontext()

    def train_step(
        self, batches: Iterator[dict[str, torch.Tensor]], state: TrainState
    ) -> dict[str, torch.Tensor]:
        """One optimiser step over `accumulation` micro-batches; returns detached mean logs."""
        self.model.train()
        sums: dict[str, torch.Tensor] = {}
        for micro in range(self.accumulation):
            batch = self._to_device(self._next_batch(batches))
            state.micro_batches += 1
            # Every rank's micro-batch has the same number of rows (a shape: known on the host).
            self.samples_seen += batch["images"].shape[0] * self.rt.world_size
            with self._sync_context(micro == self.accumulation - 1):
                with self.rt.autocast():
                    logs = self.step_module(batch)
                loss = logs["total"] / self.accumulation
                if self.scaler is not None:
                    self.scaler.scale(loss).backward()
                else:
                    loss.backward()
            for key, value in logs.items():
                value = value.detach().float() / self.accumulation
                sums[key] = sums[key] + value if key in sums else value
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.grad_clip is not None:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        else:
            grads = [p.grad for p in self.model.parameters() if p.grad is not None]
            norm = torch.nn.utils.get_total_norm(grads) if grads else None
        if hasattr(norm, "full_tensor"):  # a DTensor under FSDP
            norm = norm.full_tensor()
        if self.grad_clip is not None:
            sums["grad_norm"] = norm.detach()
        # A non-finite loss or gradient: the step is skipped on the device and left out of the logs.
        bad = self.guard.flag(sums["total"], norm)
        keys = list(sums)
        masked = torch.where(bad, 0.0, torch.stack([sums[k] for k in keys]))
        sums = dict(zip(keys, masked.unbind(), strict=True))
        sums["skipped_steps"] = bad.float()
        self.guard.optimizer_step(self.optimizer, self.scaler, bad)
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        state.step += 1
        self.guard.record(state.step, bad)
        return sums

    def fit(
        self, batches: Iterator[dict[str, torch.Tensor]], state: TrainState, run_dir: Path
    ) -> TrainResult:
        result = TrainResult(run_dir, state.step)
        self.skips = batches if isinstance(batches, SkipCounter) else None
        window: dict[str, torch.Tensor] = {}
        window_steps, window_start = 0, time.perf_counter()
        last_saved = state.step
        try:
            while state.step < self.stop_at:
                sums = self.train_step(batches, state)
                for key, value in sums.items():
                    window[key] = window[key] + value if key in window else value
                window_steps += 1
                at_end = state.step == self.max_steps
                eval_due = self.evaluator is not None and self.evaluator.due(state.step, at_end)
                if state.step % self.log_every == 0 or at_end or state.step == 1 or eval_due:
                    values = self._flush(window, window_steps, time.perf_counter() - window_start)
                    if eval_due:  # on the same metrics line as the step's losses
                        values.update(self.evaluator(state.step))
                    values["step"] = state.step
                    self.metrics.log(state.step, {k: v for k, v in values.items() if k != "step"})
                    self.reporter.step_status(state.step, self.max_steps, values)
                    result.history.append(values)
                    if result.first_loss is None:
                        result.first_loss = values["loss"]
                    result.last_loss = values["loss"]
                    window, window_steps, window_start = {}, 0, time.perf_counter()
                    if self.skips is not None:  # after the line is logged: it shows the counts
                        self.skips.check(*self._skip_totals, self.max_bad_samples)
                checkpoint_due = state.step % self.checkpoint_every == 0 or at_end
                if checkpoint_due:
                    self.guard.absorb()  # the checkpoint syncs anyway: its guard state must be exact
                target = self.guard.rollback_target(run_dir)
                if target is not None:
                    state, batches = self._roll_back(target, state)
                    self.skips = batches if isinstance(batches, SkipCounter) else None
                    result.history = [row for row in result.history if row["step"] <= state.step]
                    window, window_steps, window_start = {}, 0, time.perf_counter()
                    last_saved = state.step
                    continue
                if checkpoint_due:
                    result.last_checkpoint = self.save_fn(state.step, self.training_state(state))
                    last_saved = state.step
                if self.stop is not None and state.step < self.stop_at and self.stop.agreed():
                    self._stop_on_signal(state, result, saved=last_saved == state.step)
                    break
        except KeyboardInterrupt:
            # Saving is a collective across processes, which an interrupted run cannot promise.
            if state.step > last_saved and not self.rt.distributed:
                result.last_checkpoint = self.save_fn(state.step, self.training_state(state))
            raise
        result.steps = state.step
        return result

    def _stop_on_signal(self, state: TrainState, result: TrainResult, saved: bool) -> None:
        """SIGTERM reached a rank: one checkpoint at this step (unless it was just written), then out."""
        if not saved:
            result.last_checkpoint = self.save_fn(state.step, self.training_state(state))
        result.stopped_by_signal = True
        assert self.stop is not None
        self.stop.stopped(state.step)
        self.reporter.warn(
            f"SIGTERM: stopped after step {state.step} of {self.max_steps} with checkpoint "
            f"{result.last_checkpoint.name if result.last_checkpoint else 'written'} — run the same command "
            "with --resume to continue"
        )

    def _roll_back(self, target: Path, state: TrainState):
        """Back to checkpoint `target` with a lower learning rate (`training.guard`)."""
        if self.reload is None or self.rebatch is None:
            raise RuntimeError("this Trainer was built without reload/rebatch: it cannot roll back")
        failed_at = self.guard.triggered_at
        scale = self.guard.rolled_back()
        live = self.guard.state_dict()
        saved = self.reload(target)
        saved = scale_learning_rate(saved, scale / float((saved.get("guard") or {}).get("lr_scale", 1.0)))
        state = self.load_training_state(saved)
        self.guard.load_state_dict(live)  # the run's own counts, not the checkpoint's
        batches = self.rebatch(state, saved)
        self.restore_rng(saved)  # after the loader exists: starting its workers draws from the global RNG
        self.metrics.truncate_after(state.step)
        self.reporter.warn(
            f"step {failed_at}: {self.guard.rollback_after} steps in a row with a non-finite loss or gradient "
            f"(skipped): rolled back to {target.name}, learning rate now x{scale:g} of the recipe's "
            f"(roll-back {self.guard.rollbacks} of at most {self.guard.max_rollbacks})"
        )
        return state, batches

    def _flush(self, window: dict[str, torch.Tensor], steps: int, seconds: float) -> dict[str, float]:
        """Mean of the window's logs over its finite steps: the only host-device sync, once per
        logged step (the guard's pending flags come back in the same transfer)."""
        keys = list(window)
        if self.rt.distributed:
            import torch.distributed as dist

            stacked = torch.stack([window[k] for k in keys])
            dist.all_reduce(stacked)
            stacked /= self.rt.world_size
            window = dict(zip(keys, stacked.unbind(), strict=True))
        flags = self.guard.pending()
        host = torch.stack([window[k] for k in keys] + [f.float() for f in flags]).tolist()
        self.guard.absorb(host[len(keys) :])
        sums = dict(zip(keys, host[: len(keys)], strict=True))
        skipped = round(sums.pop("skipped_steps", 0.0))
        good = steps - skipped
        values = {
            ("loss" if k == "total" else k): (v / good if good else float("nan")) for k, v in sums.items()
        }
        if self.guard.skipped:  # from the first skipped step on (a quiet log until then)
            values["skipped_steps"] = float(skipped)
            values.update(self.guard.metrics())
        if self.skips is not None:
            read, counts = self.skips.totals(self.rt.device, self.rt.distributed)
            values.update(self.skips.metrics(read, counts))
            self._skip_totals = (read, counts)
        if "video_batches" in values:  # a run mixing images and clips: per-media means
            share = values["video_batches"]
            values["loss_video"] = values["loss_video"] / share if share > 0 else float("nan")
            values["loss_image"] = values["loss_image"] / (1 - share) if share < 1 else float("nan")
            for key in self.clip_only_logs & values.keys():
                values[key] = values[key] / share if share > 0 else float("nan")
        group = self.optimizer.param_groups[0]
        values["lr"] = group["lr"] / group.get("lr_mult", 1.0)  # the encoders' rate; others scale it
        values["samples_per_s"] = self.samples_seen / max(seconds, 1e-9)
        self.samples_seen = 0
        values["step_time"] = seconds / steps
        values["data_wait"] = min(self.data_wait / max(seconds, 1e-9), 1.0)  # this rank's share
        self.data_wait = 0.0
        return values
