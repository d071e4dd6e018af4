"""Pre-training loader: batch layout, determinism, exact resume, rank/worker split, errors; transforms."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from scl_cli.data.sampling import bounded_shuffle
from scl_cli.data.stream import build_train_loader
from scl_cli.data.tokenizer import TextTokenizer, load_tokenizer
from scl_cli.data.transforms import ImageTransform, random_resized_crop_box
from scl_cli.errors import DataError
from scl_cli.model.preprocess import normalize, to_model_input

BATCH, SIZE, MAX_LEN = 4, 32, 20


@pytest.fixture(scope="module")
def tokenizer(tiny_root: Path) -> TextTokenizer:
    return load_tokenizer("dataset", tiny_root, "shapes")


def batches(
    root: Path, tokenizer: TextTokenizer, n: int, **overrides: object
) -> list[dict[str, torch.Tensor]]:
    args: dict = dict(
        data_root=root, datasets=["shapes"], weights=None, split="train", tokenizer=tokenizer, image_size=SIZE,
        max_len=MAX_LEN, batch_size=BATCH, seed=7, num_workers=2, shuffle_buffer=8,
    )  # fmt: skip
    args.update(overrides)
    stream = iter(build_train_loader(**args))
    return [next(stream) for _ in range(n)]


def assert_same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            assert torch.equal(x[key], y[key]), key


def test_batch_layout(tiny_root: Path, tokenizer: TextTokenizer) -> None:
    (batch,) = batches(tiny_root, tokenizer, 1)
    assert set(batch) == {
        "images",
        "text_ids",
        "text_mask",
        "index",
        "skipped",
        "skipped_by_source",
        "read_retries",
    }
    assert batch["skipped"].sum() == 0 and batch["skipped_by_source"].tolist() == [0]  # nothing undecodable
    # uint8 pixels: a quarter of float32's bytes through the worker queue and the device copy
    assert batch["images"].shape == (BATCH, 1, 3, SIZE, SIZE) and batch["images"].dtype == torch.uint8
    assert batch["text_ids"].shape == batch["text_mask"].shape == (BATCH, MAX_LEN)
    assert batch["text_ids"].dtype == batch["text_mask"].dtype == batch["index"].dtype == torch.int64
    assert batch["index"].shape == (BATCH,)
    assert ((batch["text_mask"] == 0) == (batch["text_ids"] == tokenizer.pad_id)).all()
    model_input = to_model_input(batch["images"])  # what the step does on its device
    assert model_input.dtype == torch.float32 and torch.equal(model_input, normalize(batch["images"]))
    assert -2.5 < model_input.min() < model_input.max() < 2.5  # CLIP-normalised


def test_pad_to_multiple_cuts_only_columns_of_padding(tiny_root: Path, tokenizer: TextTokenizer) -> None:
    full = batches(tiny_root, tokenizer, 4, max_len=40)
    short = batches(tiny_root, tokenizer, 4, max_len=40, pad_to_multiple=4)
    for a, b in zip(full, short, strict=True):
        width = b["text_ids"].shape[1]
        longest = int(a["text_mask"].sum(dim=1).max())
        assert width % 4 == 0 and longest <= width < longest + 4
        assert torch.equal(a["text_ids"][:, :width], b["text_ids"]) and torch.equal(
            a["text_mask"][:, :width], b["text_mask"]
        )
        assert not a["text_mask"][:, width:].any()
        assert torch.equal(a["images"], b["images"]) and torch.equal(a["index"], b["index"])


def test_trim_padding_never_exceeds_max_len() -> None:
    from scl_cli.data.collate import trim_padding

    mask = torch.zeros(3, 10, dtype=torch.long)
    mask[0, :9] = 1
    ids = torch.arange(30).view(3, 10)
    assert trim_padding(ids, mask, 4)[0].shape == (3, 10)  # 9 rounds up to 12: capped at 10
    mask[0, 5:] = 0
    assert trim_padding(ids, mask, 4)[0].shape == (3, 8)
    assert trim_padding(ids, mask, 0)[0] is ids


def test_same_arguments_same_batches(tiny_root: Path, tokenizer: TextTokenizer) -> None:
    first = batches(tiny_root, tokenizer, 6)
    assert_same(first, batches(tiny_root, tokenizer, 6))
    other_seed = batches(tiny_root, tokenizer, 6, seed=8)
    assert not all(torch.equal(a["index"], b["index"]) for a, b in zip(first, other_seed, strict=True))


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_continues_the_stream_exactly(tiny_root: Path, tokenizer: TextTokenizer, workers: int) -> None:
    # 20 batches of 4 = 80 samples: two and a half epochs of the 32 train samples.
    straight = batches(tiny_root, tokenizer, 20, num_workers=workers)
    for start in (3, 9):
        assert_same(
            straight[start:],
            batches(tiny_root, tokenizer, 20 - start, num_workers=workers, start_batch=start),
        )


def test_each_slot_sees_every_sample_once_per_epoch(tiny_root: Path, tokenizer: TextTokenizer) -> None:
    # Shards hold 10, 10, 10, 2 samples; with two ranks of one worker, rank 0 owns shards 0 and 2
    # (20 samples), rank 1 shards 1 and 3 (12 samples).
    epoch = {}
    for rank, size in ((0, 20), (1, 12)):
        stream = batches(tiny_root, tokenizer, 2 * size // BATCH, rank=rank, world_size=2, num_workers=0)
        seen = torch.cat([b["index"] for b in stream]).tolist()
        first, second = seen[:size], seen[size:]
        assert len(set(first)) == size and set(first) == set(second) and first != second
        epoch[rank] = set(first)
    assert not epoch[0] & epoch[1] and epoch[0] | epoch[1] == set(range(32))


def test_weights_mix_data_sets(tiny_root: Path, tokenizer: TextTokenizer, tmp_path: Path) -> None:
    shutil.copytree(tiny_root / "shapes", tmp_path / "shapes")
    shutil.copytree(tiny_root / "shapes", tmp_path / "copy")
    only_first = batches(tmp_path, tokenizer, 4, datasets=["shapes", "copy"], weights=[1.0, 0.0])
    assert all((b["index"] < 32).all() for b in only_first)
    mixed = torch.cat([b["index"] for b in batches(tmp_path, tokenizer, 10, datasets=["shapes", "copy"])])
    assert 5 < int((mixed >= 32).sum()) < 35  # equal sizes: about half from each


def test_too_few_shards_for_the_slots(tiny_root: Path, tokenizer: TextTokenizer) -> None:
    with pytest.raises(
        DataError, match=r"has 4 shards, fewer than the 8 loader slots \(4 ranks x 2 workers\)"
    ):
        batches(tiny_root, tokenizer, 1, world_size=4)
    with pytest.raises(DataError, match="has 1 shards"):
        batches(tiny_root, tokenizer, 1, split="val")


def test_missing_data_is_a_data_error(tiny_root: Path, tokenizer: TextTokenizer, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nope: data set folder missing"):
        batches(tiny_root, tokenizer, 1, datasets=["nope"])
    with pytest.raises(DataError, match=r"no split 'dev' in 'splits' \(has: test, train, val\)"):
        batches(tiny_root, tokenizer, 1, split="dev")
    shutil.copytree(tiny_root / "shapes", tmp_path / "shapes")
    (tmp_path / "shapes" / "train" / "000002.tar").unlink()
    with pytest.raises(DataError, match="000002.tar: listed in .*manifest.json but missing"):
        batches(tmp_path, tokenizer, 1)


def test_bounded_shuffle_is_a_bounded_permutation() -> None:
    order = bounded_shuffle(100, 10, random.Random(0))
    assert sorted(order) == list(range(100)) and order != list(range(100))
    assert all(position <= t + 10 for t, position in enumerate(order))


def test_transforms() -> None:
    image = Image.new("RGB", (120, 80), (255, 0, 0))
    evaluation = ImageTransform(32, augment=False)
    out = evaluation(image)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    assert torch.allclose(out[:, 0, 0], torch.tensor([1.93, -1.75, -1.48]), atol=0.01)  # CLIP-normalised red
    train = ImageTransform(32, augment=True, crop_min_scale=0.5)
    assert torch.equal(train(image, random.Random(3)), train(image, random.Random(3)))
    for seed in range(50):
        left, top, right, bottom = random_resized_crop_box(120, 80, random.Random(seed), (0.5, 1.0))
        assert 0 <= left < right <= 120 and 0 <= top < bottom <= 80
        assert (right - left) * (bottom - top) >= 0.5 * 120 * 80 - 200
