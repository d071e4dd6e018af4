"""`benchmarks/retrieval_ceiling.py --ckpt`: a checkpoint's zero-shot R@1 per caption kind, set
beside the ceiling, agrees with retrieval by the public embedding API."""

from __future__ import annotations

import json

import torch

from scl_cli.data.task_batches import iter_split
from scl_cli.inference import SCL

from ..conftest import load_benchmark


def test_model_r1_per_kind_is_retrieval_by_the_embedding_api(tiny_run, shapes_root) -> None:
    ceiling = load_benchmark("retrieval_ceiling")
    dataset, n = shapes_root / "shapes", 6
    result = ceiling.model_per_kind(tiny_run, dataset, "val", n)

    records = [(s["jpg"], json.loads(s["json"])) for s in iter_split(shapes_root, "shapes", "val")][:n]
    model = SCL.from_pretrained(tiny_run, device="cpu")
    # the same batches as the script (CPU rounding depends on the batch), so argmax ties agree too
    images = model.embed_images([jpg for jpg, _ in records], batch_size=64)
    texts = model.embed_texts([c for _, record in records for c in record["captions"]], batch_size=256)
    first = (texts @ images.T).argmax(dim=1).view(n, len(ceiling.KINDS))
    for k, kind in enumerate(ceiling.KINDS):
        r1 = 100 * (first[:, k] == torch.arange(n)).float().mean().item()
        got = result["per_kind"][kind]
        assert abs(got["r1"] - r1) < 1e-6, kind
        # a hit is an image the caption is true of: its own
        assert got["r1"] <= got["first_true"] <= 100
    assert result["images"] == n
    assert abs(result["t2i_r1"] - sum(v["r1"] for v in result["per_kind"].values()) / 5) < 1e-9
