"""Checkpoints for the inference API, the Hub and `scl serve`: a tiny pre-training run (what
`make demo` makes, in 2 steps), the same model with every task head saved by `save_pretrained`,
and a converted published checkpoint (tiny official layout, with fine-tuned heads)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from scl_cli.config import load_recipe
from scl_cli.data.tokenizer import train_bpe_tokenizer
from scl_cli.engines.convert import convert_official
from scl_cli.engines.pretrain import pretrain
from scl_cli.inference import SCL
from scl_cli.model.task_heads import add_nlvr2_head, add_rank_head, add_vqa_head

from ..conftest import RECIPES, tiny_overrides
from ..model.test_official import KEYS_FILE, tiny_official_state_dict

ANSWERS = ["red", "blue", "green", "two", "yes", "no"]


@pytest.fixture(scope="session")
def tiny_run(shapes_root, tmp_path_factory) -> Path:
    """A `recipes/tiny.toml` pre-training run on the shapes data (2 steps): no task heads."""
    run = tmp_path_factory.mktemp("tiny") / "run"
    pretrain(load_recipe(RECIPES / "tiny.toml", tiny_overrides(shapes_root, run, steps=2)[1::2]))
    return run


@pytest.fixture(scope="session")
def heads_ckpt(tiny_run, tmp_path_factory) -> Path:
    """The tiny model with a VQA head (and its answer list), an NLVR2 head and a rank head, written
    by `save_pretrained`: a self-describing folder."""
    model = SCL.from_pretrained(tiny_run, device="cpu")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        add_vqa_head(model.module, len(ANSWERS))
        add_nlvr2_head(model.module)
        add_rank_head(model.module)
    model.answers = list(ANSWERS)
    return model.save_pretrained(tmp_path_factory.mktemp("heads") / "model")


def official_with_heads() -> dict[str, torch.Tensor]:
    """The tiny published layout (width 128, vocabulary 300) plus fine-tuned VQA, NLVR2 and rank heads."""
    state = tiny_official_state_dict(seed=5)
    gen = torch.Generator().manual_seed(1)
    w = 128

    def mlp(prefix: str, inp: int, hidden: int, out: int) -> None:
        state[f"{prefix}.0.weight"] = torch.randn(hidden, inp, generator=gen) / inp**0.5
        state[f"{prefix}.0.bias"] = torch.zeros(hidden)
        state[f"{prefix}.1.weight"], state[f"{prefix}.1.bias"] = torch.ones(hidden), torch.zeros(hidden)
        state[f"{prefix}.3.weight"] = torch.randn(out, hidden, generator=gen) / hidden**0.5
        state[f"{prefix}.3.bias"] = torch.zeros(out)

    mlp("vqa_classifier", 2 * w, 2 * w, len(ANSWERS))
    mlp("nlvr2_classifier", 4 * w, 2 * w, 2)
    state["rank_output.weight"], state["rank_output.bias"] = (
        torch.randn(1, 2 * w, generator=gen),
        torch.zeros(1),
    )
    types = state["token_type_embeddings.weight"]
    state["token_type_embeddings.weight"] = torch.cat([types, types[1:2]])  # NLVR2: a third row
    return state


@pytest.fixture(scope="session")
def official_ckpt(tmp_path_factory) -> tuple[Path, Path]:
    """(folder written by `scl convert`, a tokenizer.json of the published vocabulary's size)."""
    if KEYS_FILE is None:
        pytest.skip("official_scl_keys.txt (shared/) not available")
    root = tmp_path_factory.mktemp("official")
    ckpt = root / "vqa.ckpt"
    torch.save({"state_dict": official_with_heads(), "global_step": 100}, ckpt)
    out = root / "converted"
    convert_official(ckpt, out)
    texts = [
        f"a {c} {s} next to a {s2}"
        for c in ("red", "blue", "green")
        for s in ("circle", "square")
        for s2 in ("star", "cross")
    ]
    tokenizer = train_bpe_tokenizer(texts * 20, vocab_size=300)
    assert tokenizer.vocab_size <= 300
    tokenizer.save(root / "tokenizer.json")
    return out, root / "tokenizer.json"


@pytest.fixture(scope="session")
def images(tmp_path_factory) -> dict[str, Path]:
    """Three small image files: a red, a blue and a green one."""
    root = tmp_path_factory.mktemp("images")
    out = {}
    for i, colour in enumerate(("red", "blue", "green")):
        out[colour] = root / f"{colour}.png"
        Image.new("RGB", (40 + 4 * i, 36), colour).save(out[colour])
    return out
