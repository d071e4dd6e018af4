"""Non-finite steps: an injected NaN (a test-only objective, registered in-process) is skipped and
leaves the weights and AdamW state untouched; K in a row roll back to the last checkpoint before
them with a lower learning rate, ending exactly where a run resumed from that checkpoint at that
learning rate ends; a run resumed after a roll-back continues exactly; after R roll-backs the run
stops with a clear message."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from pydantic import Field
from safetensors.torch import load_file

from scl_cli.config import load_recipe
from scl_cli.config.objectives import ObjectiveSettings
from scl_cli.engines.pretrain import pretrain
from scl_cli.errors import TrainingError
from scl_cli.objectives import Objective, register
from scl_cli.training.guard import NonFiniteGuard, scale_learning_rate

from ..conftest import RECIPES


class NaNAtSettings(ObjectiveSettings):
    name = "nan_at"
    pretraining = False
    calls: list[int] = Field(default_factory=list, description="Forward calls (from 1) whose loss is NaN.")


@register
class NaNAt(Objective):
    """Adds nothing (0 x a real feature), except NaN on the chosen calls of this instance."""

    name = "nan_at"
    Settings = NaNAtSettings

    def __init__(self, settings: NaNAtSettings) -> None:
        super().__init__(settings)
        self.calls = 0

    def encodings(self):
        return ("full",), ("full",)

    def loss(self, ctx):
        self.calls += 1
        _, image = ctx.itc()
        return {"loss": image.mean() * (float("nan") if self.calls in self.settings.calls else 0.0)}


def recipe(shapes_root: Path, run: Path, calls: list[int], **sets):
    values = {
        "data.root": f'"{shapes_root}"', "output.dir": f'"{run}"', "data.num_workers": 0,
        "optim.max_steps": 6, "optim.batch_size": 4, "log.every": 1, "log.loggers": "[]",
        "output.checkpoint_every": 2, "output.keep_last": 10, "topology.device": "cpu",
        "objectives.nan_at.weight": 1.0, "objectives.nan_at.calls": str(calls),
        "optim.rollback_after": 2, "optim.rollback_lr_factor": 0.5, **sets,
    }  # fmt: skip
    return load_recipe(RECIPES / "tiny.toml", [f"{k}={v}" for k, v in values.items()])


def weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return load_file(str(ckpt / "model.safetensors"))


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different[:5]


def test_a_non_finite_step_is_skipped_and_counted(shapes_root, tmp_path):
    run = tmp_path / "run"
    pretrain(recipe(shapes_root, run, [3], **{"optim.rollback_after": 0, "output.checkpoint_every": 1,
                                             "optim.max_steps": 4}))  # fmt: skip
    ckpts = run / "checkpoints"
    assert_equal(weights(ckpts / "step-2"), weights(ckpts / "step-3"))  # step 3 changed nothing
    before = torch.load(ckpts / "step-2" / "training_state.pt", weights_only=True)["optimizer"]["state"]
    after = torch.load(ckpts / "step-3" / "training_state.pt", weights_only=True)["optimizer"]["state"]
    for key in before:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(before[key][name], after[key][name]), (key, name)
    assert not torch.equal(
        weights(ckpts / "step-3")["itc_temperature"], weights(ckpts / "step-4")["itc_temperature"]
    )
    logged = {r["step"]: r for r in rows(run)}
    assert (
        logged[3]["skipped_steps"] == 1
        and "skipped_steps" not in logged[2]
        and logged[4]["skipped_steps"] == 0
    )
    assert all(r["loss"] == r["loss"] for r in logged.values())  # the NaN step is left out of the means
    assert logged[4]["skipped_steps_total"] == 1


def test_k_in_a_row_roll_back_and_resume_exactly(shapes_root, tmp_path):
    rolled = tmp_path / "rolled"
    result = pretrain(recipe(shapes_root, rolled, [3, 4]))
    assert result.steps == 6
    logged = rows(rolled)
    assert [r["step"] for r in logged] == list(range(1, 7))  # steps 3 and 4 ran again after the roll-back
    assert logged[-1]["rollbacks"] == 1 and logged[-1]["lr_scale"] == 0.5
    assert logged[-1]["skipped_steps_total"] == 2

    # What the design says it equals: step-2 (the last checkpoint before the NaNs) resumed with the
    # learning rate halved.
    reference = tmp_path / "reference"
    (reference / "checkpoints").mkdir(parents=True)
    shutil.copytree(rolled / "checkpoints" / "step-2", reference / "checkpoints" / "step-2")
    state_file = reference / "checkpoints" / "step-2" / "training_state.pt"
    torch.save(scale_learning_rate(torch.load(state_file, weights_only=True), 0.5), state_file)
    pretrain(recipe(shapes_root, reference, []), resume=True)
    assert_equal(weights(rolled / "checkpoints" / "step-6"), weights(reference / "checkpoints" / "step-6"))

    # A run resumed from a checkpoint written after the roll-back (step-4) ends where it did.
    resumed = tmp_path / "resumed"
    shutil.copytree(rolled, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-6")
    pretrain(recipe(shapes_root, resumed, []), resume=True)
    assert_equal(weights(rolled / "checkpoints" / "step-6"), weights(resumed / "checkpoints" / "step-6"))
    assert rows(resumed)[-1]["rollbacks"] == 1


def test_after_r_roll_backs_the_run_stops(shapes_root, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(TrainingError, match=r"after 1 roll-back\(s\).*the run stops — lower optim.lr"):
        pretrain(recipe(shapes_root, run, list(range(3, 100)), **{"optim.max_rollbacks": 1}))
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["rollbacks"] == 1
    none_before = tmp_path / "early"
    with pytest.raises(TrainingError, match="no checkpoint from before step 1"):
        pretrain(recipe(shapes_root, none_before, list(range(1, 100))))


def test_the_fused_optimizer_skips_on_the_device():
    """What CUDA runs (fused AdamW, `found_inf`): no host read, weights and state unchanged."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 4)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=0.1, fused=True)
    guard = NonFiniteGuard(2, 0.5, 1)
    for bad_step in (False, True):
        loss = layer(torch.randn(3, 4)).sum() * (float("nan") if bad_step else 1.0)
        loss.backward()
        norm = torch.nn.utils.get_total_norm([p.grad for p in layer.parameters()])
        before = [p.detach().clone() for p in layer.parameters()]
        moments = [optimizer.state[p]["exp_avg"].clone() for p in layer.parameters()] if bad_step else []
        bad = guard.flag(loss, norm)
        guard.optimizer_step(optimizer, None, bad)
        optimizer.zero_grad(set_to_none=True)
        changed = any(not torch.equal(a, p) for a, p in zip(before, layer.parameters(), strict=True))
        assert changed != bad_step
    assert all(torch.equal(m, optimizer.state[p]["exp_avg"]) for m, p in zip(moments, layer.parameters(),
                                                                           strict=True))  # fmt: skip
    assert all(float(optimizer.state[p]["step"]) == 1 for p in layer.parameters())
