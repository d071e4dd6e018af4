"""The recipes' data set names are what `scl prepare` writes, and the pre-training loader reads
the prepared shards of coco + vg + sbu + cc3m together."""

from __future__ import annotations

import tomllib
from pathlib import Path

import torch

from scl_cli.data.stream import build_train_loader
from scl_cli.data.tokenizer import train_bpe_tokenizer
from scl_cli.engines.prepare import prepare, preparers

from .realdata import make_coco, make_img2dataset, make_vg

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def test_recipe_data_set_names_can_be_prepared() -> None:
    base = tomllib.loads((RECIPES / "base.toml").read_text())
    assert base["data"]["train"] == ["coco", "vg", "sbu", "cc3m"]
    names = set(base["data"]["train"])
    for recipe in sorted((RECIPES / "finetune").glob("*.toml")):
        data = tomllib.loads(recipe.read_text()).get("data", {})
        for key in ("dataset", "train", "datasets"):
            value = data.get(key)
            names |= {value} if isinstance(value, str) else set(value or [])
    assert names <= set(preparers()), names - set(preparers())
    assert {"coco", "vg", "sbu", "cc3m", "f30k", "vqav2", "nlvr2"} <= set(preparers())


def test_pretraining_loader_reads_the_four_data_sets(tmp_path: Path) -> None:
    make_coco(tmp_path / "coco")
    make_vg(tmp_path / "vg")
    make_img2dataset(tmp_path / "sbu-wds")
    make_img2dataset(tmp_path / "cc3m-wds")
    root = tmp_path / "data"
    common = {"workers": 1, "image_size": 48}
    prepare("coco", root, source=[tmp_path / "coco"], **common)
    prepare("vg", root, source=[tmp_path / "vg"], **common)
    prepare("sbu", root, webdataset=[tmp_path / "sbu-wds"], **common)
    prepare("cc3m", root, webdataset=[tmp_path / "cc3m-wds"], **common)
    tokenizer = train_bpe_tokenizer(["a photo of a bus station", "man wearing hat", "a printed poster"], 300)
    loader = build_train_loader(root, ["coco", "vg", "sbu", "cc3m"], None, "train", tokenizer, image_size=32,
                                   max_len=16, batch_size=6, seed=0, num_workers=0, shuffle_buffer=4)  # fmt: skip
    batch = next(iter(loader))
    assert batch["images"].shape == (6, 1, 3, 32, 32) and batch["text_ids"].shape[0] == 6
    assert torch.isfinite(batch["images"]).all()
