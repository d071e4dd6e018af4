"""`scl.load` and the five calls (embed_images, embed_texts, score, answer, nlvr2) on a pre-training
run, a self-describing checkpoint with every head and a converted published checkpoint; inputs of
every kind; one-line errors; `save_pretrained` -> `load` gives identical outputs; old checkpoints."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import scl_cli as scl
from scl_cli.errors import CheckpointError, UsageError
from scl_cli.inference import SCL, Answer, Verdict
from scl_cli.inference.inputs import InputError

from .conftest import ANSWERS


def five_calls(model: SCL, images) -> dict[str, object]:
    """Every call of the API once; heads the model lacks give their one-line error."""
    red, blue = images["red"], images["blue"]
    out: dict[str, object] = {
        "images": model.embed_images([red, Image.open(blue)]),
        "texts": model.embed_texts(["a red circle", "a blue square"]),
        "score": model.score([red, blue], ["a red circle", "a blue square"]),
    }
    for name, call in (("answer", lambda: model.answer(red, "what colour is the shape?")),
                       ("nlvr2", lambda: model.nlvr2(red, blue, "the left image is red"))):  # fmt: skip
        try:
            out[name] = call()
        except UsageError as err:
            out[name] = err
    return out


def test_a_pretraining_run_embeds_scores_and_says_which_heads_it_lacks(tiny_run, images):
    model = scl.load(tiny_run)
    assert isinstance(model, scl.SCL) and model.heads == [] and model.scorer == "ITM match logit"
    out = five_calls(model, images)
    dim = model.model_config.itc_dim
    assert out["images"].shape == (2, dim) and out["texts"].shape == (2, dim)
    assert torch.allclose(out["images"].norm(dim=1), torch.ones(2), atol=1e-5)
    assert out["score"].shape == (2,) and out["score"].dtype == torch.float32
    for name, label in (("answer", "VQA"), ("nlvr2", "NLVR2")):
        message = str(out[name])
        assert (
            isinstance(out[name], UsageError)
            and f"has no {label} head" in message
            and "scl finetune" in message
        )
        assert "\n" not in message and str(tiny_run) in message


def test_every_kind_of_image_input_gives_the_same_pixels(tiny_run, images):
    model = scl.load(tiny_run, device="cpu")
    path = images["green"]
    pil = Image.open(path).convert("RGB")
    array = np.array(pil)
    inputs = [path, str(path), path.read_bytes(), pil, array, array.astype(np.float32) / 255,
              torch.from_numpy(array).permute(2, 0, 1), torch.from_numpy(array).permute(2, 0, 1).float() / 255]  # fmt: skip
    embedded = model.embed_images(inputs)
    assert torch.allclose(embedded, embedded[:1].expand_as(embedded), atol=1e-6)
    assert torch.allclose(model.embed_images(path), embedded[:1], atol=1e-6)  # one image -> [1, E]
    clip = torch.stack([torch.from_numpy(array).permute(2, 0, 1)] * 3)  # [T, 3, H, W]: a clip of 3 frames
    assert model.pixels([clip])[0].shape[0] == 3 and model.embed_images([clip]).shape == (
        1,
        embedded.shape[1],
    )


def test_bad_inputs_are_one_line_errors(tiny_run, images, tmp_path):
    model = scl.load(tiny_run)
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    cases = [
        (lambda: model.embed_images([tmp_path / "broken.jpg"]), "unreadable image"),
        (lambda: model.embed_images([tmp_path / "nowhere.png"]), "missing file"),
        (lambda: model.embed_images([np.zeros((4, 4, 7), np.uint8)]), "expected [H, W]"),
        (lambda: model.embed_images([{"not": "an image"}]), "expected a path"),
        (lambda: model.embed_texts(["fine", "  "]), "text 1: empty"),
        (lambda: model.score([images["red"]] * 2, ["a", "b", "c"]), "2 images and 3 texts"),
    ]
    for call, message in cases:
        with pytest.raises(InputError) as err:
            call()
        assert message in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(CheckpointError, match="does not exist"):
        scl.load(tmp_path / "no-such-run")


def test_a_checkpoint_with_every_head_answers_and_judges(heads_ckpt, images):
    config = json.loads((heads_ckpt / "config.json").read_text())
    assert config["heads"] == {"vqa": {"answers": len(ANSWERS), "hidden": 192, "vocabulary": "answers.json"},
                               "nlvr2": {"hidden": 192, "token_types": 3}, "rank": {}}  # fmt: skip
    model = scl.load(heads_ckpt)
    assert model.heads == ["vqa", "nlvr2", "rank"] and model.scorer == "rank head"
    out = five_calls(model, images)
    answer = out["answer"]
    assert isinstance(answer, Answer) and answer.answer in ANSWERS and 0 < answer.score < 1
    assert [a for a, _ in answer.top] == [answer.answer, *[a for a, _ in answer.top[1:]]] and len(
        answer.top
    ) == 3
    assert [p for _, p in answer.top] == sorted((p for _, p in answer.top), reverse=True)
    verdict = out["nlvr2"]
    assert isinstance(verdict, Verdict) and verdict.label == (verdict.probability > 0.5)
    # batches: one image and several questions; N images and N questions
    many = model.answer(images["red"], ["what colour?", "how many shapes?"], top_k=1)
    assert [a.question for a in many] == ["what colour?", "how many shapes?"] and len(many[0].top) == 1
    pairs = model.answer([images["red"], images["blue"]], ["what colour?", "what colour?"])
    alone = model.answer(images["red"], "what colour?").top
    # the same answers; probabilities to float rounding (a batch of 2 runs other matmul kernels than 1)
    assert [a for a, _ in pairs[0].top] == [a for a, _ in alone]
    assert [p for _, p in pairs[0].top] == pytest.approx([p for _, p in alone], rel=1e-5, abs=1e-7)
    assert len(model.nlvr2([images["red"]] * 2, [images["blue"]] * 2, ["a", "b"])) == 2


def test_save_pretrained_then_load_gives_identical_outputs(heads_ckpt, images, tmp_path):
    model = scl.load(heads_ckpt)
    saved = model.save_pretrained(tmp_path / "again")
    assert {p.name for p in saved.iterdir()} == {"model.safetensors", "config.json", "tokenizer.json",
                                                  "answers.json", "README.md"}  # fmt: skip
    again = scl.load(saved)
    first, second = five_calls(model, images), five_calls(again, images)
    for key in ("images", "texts", "score"):
        assert torch.equal(first[key], second[key]), key
    assert first["answer"] == second["answer"] and first["nlvr2"] == second["nlvr2"]


def test_a_checkpoint_without_the_heads_field_still_loads(heads_ckpt, tmp_path, images):
    """Checkpoints written before config.json described its heads: found by their key names."""
    old = tmp_path / "old"
    shutil.copytree(heads_ckpt, old)
    config = json.loads((old / "config.json").read_text())
    del config["heads"]
    (old / "config.json").write_text(json.dumps(config))
    model = scl.load(old)
    assert model.heads == ["vqa", "nlvr2", "rank"] and model.answers == ANSWERS
    assert model.answer(images["red"], "what colour?") == scl.load(heads_ckpt).answer(
        images["red"], "what colour?"
    )


def test_a_converted_published_checkpoint_answers_too(official_ckpt, images):
    converted, tokenizer = official_ckpt
    config = json.loads((converted / "config.json").read_text())
    assert config["heads"] == {"vqa": {"answers": len(ANSWERS), "hidden": 256},
                               "nlvr2": {"hidden": 256, "token_types": 3}, "rank": {}}  # fmt: skip
    model = scl.load(converted, tokenizer=tokenizer, answers=ANSWERS)
    assert model.heads == ["vqa", "nlvr2", "rank"] and model.module.config.fusion.width == 128
    out = five_calls(model, images)
    assert out["images"].shape == (2, 32) and out["texts"].shape == (2, 32) and out["score"].shape == (2,)
    assert isinstance(out["answer"], Answer) and out["answer"].answer in ANSWERS
    assert isinstance(out["nlvr2"], Verdict)
    # a published VQA head comes without its answer list: said in one line
    bare = scl.load(converted, tokenizer=tokenizer)
    with pytest.raises(UsageError, match="no answer list .* answers=FILE.json"):
        bare.answer(images["red"], "what colour?")
    # the published file itself, converted in memory, gives the same model
    direct = scl.load(converted.parent / "vqa.ckpt", tokenizer=tokenizer, answers=ANSWERS)
    assert torch.equal(direct.embed_texts(["a red circle"]), model.embed_texts(["a red circle"]))


def test_bfloat16_inference_follows_float32(tiny_run, images):
    full = scl.load(tiny_run, dtype="float32")
    half = scl.load(tiny_run, dtype="bfloat16")
    assert half.module.text_transform.weight.dtype == torch.bfloat16
    a, b = full.embed_images([images["red"]]), half.embed_images([images["red"]])
    assert b.dtype == torch.float32 and float((a * b).sum()) > 0.98
    with pytest.raises(UsageError, match="dtype 'int8'"):
        scl.load(tiny_run, dtype="int8")
