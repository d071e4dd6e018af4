"""Evaluation during training (`[eval]`): the probe's numbers against a plain re-statement, the
metrics lines and RUN/best, and a run that evaluates trains exactly as one that does not."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from scl_cli.config import load_recipe
from scl_cli.engines.pretrain import pretrain
from scl_cli.evaluation.probe import load_probe_set, probe
from scl_cli.inference.loading import load_model
from scl_cli.model.preprocess import to_model_input

from ..conftest import RECIPES, tiny_overrides


def run(shapes_root, out, steps=3, **sets):
    overrides = tiny_overrides(shapes_root, out, steps=steps, **{"output.checkpoint_every": 100, **sets})[
        1::2
    ]
    return pretrain(load_recipe(RECIPES / "tiny.toml", overrides))


@pytest.fixture(scope="module")
def evaluated(shapes_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "run"
    run(shapes_root, out, steps=3, **{"eval.every": 2, "eval.images": 6, "eval.pictures": "false"})
    return out


def test_probe_matches_a_plain_restatement(shapes_root, evaluated):
    loaded = load_model(evaluated)
    model = loaded.model.eval()
    vision, text = model.config.vision, model.config.text
    probe_set = load_probe_set(
        shapes_root, "shapes", "val", 6, loaded.tokenizer, vision.image_size, text.max_len
    )
    got = probe(model, probe_set, torch.device("cpu"), batch=4)
    with torch.no_grad():
        enc = model.encode_image(to_model_input(probe_set.pixels))
        hidden = model.encode_text(probe_set.ids, probe_set.mask)
        sim = model.itc_image(enc) @ model.itc_text(hidden, probe_set.mask).t()  # [images, texts]
        n = len(probe_set)
        t2i_rank = (sim > sim.diagonal()[None, :]).sum(0)  # images above each text's own
        i2t_rank = (sim > sim.diagonal()[:, None]).sum(1)
        assert got["ir_r1"] == pytest.approx(100 * (t2i_rank < 1).float().mean().item())
        assert got["tr_r5"] == pytest.approx(100 * (i2t_rank < 5).float().mean().item())
        images, texts = model.embed_image(enc), model.embed_text(hidden)
        right = 0
        for i in range(n):
            for j, label in ((i, 1), (int(probe_set.negatives[i]), 0)):
                pooled = model.pooled(
                    model.fuse(texts[j : j + 1], probe_set.mask[j : j + 1], images[i : i + 1]), 1
                )
                right += int(model.itm_logits(pooled).argmax(1).item() == label)
    assert got["itm_acc"] == pytest.approx(right / (2 * n))
    assert all(int(probe_set.negatives[i]) != i for i in range(n))


def test_evaluations_land_on_their_steps_and_keep_the_best(evaluated):
    lines = [json.loads(line) for line in (evaluated / "metrics.jsonl").read_text().splitlines()]
    with_eval = [line["step"] for line in lines if "eval/ir_r1" in line]
    assert with_eval == [2, 3]  # every 2 steps, and at the end
    assert len({line["step"] for line in lines}) == len(lines)  # one line per logged step
    best = json.loads((evaluated / "best" / "config.json").read_text())
    scores = {line["step"]: line["eval/ir_r1"] for line in lines if "eval/ir_r1" in line}
    assert best["best"]["value"] == max(scores.values()) and scores[best["step"]] == best["best"]["value"]
    assert (evaluated / "best" / "model.safetensors").is_file()


@pytest.mark.slow
def test_a_run_that_evaluates_trains_the_same_weights(shapes_root, evaluated, tmp_path):
    plain = tmp_path / "plain"
    run(shapes_root, plain, steps=3)
    a = load_file(next((evaluated / "checkpoints").glob("step-3")) / "model.safetensors")
    b = load_file(next((plain / "checkpoints").glob("step-3")) / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
