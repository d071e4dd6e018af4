"""ALIGN-BENCH scores (IIGROUP/SCL align_global.py / align_local.py): planted attention, the
uniform baseline, word merging, the mask resize, the restricted unpickler, and `scl align`."""

from __future__ import annotations

import io
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from scl_cli.data.align_bench import Region, iter_align_bench, read_pickle
from scl_cli.errors import DataError
from scl_cli.evaluation.align import AlignScores, merge_words, phrase_index, resize_mask, score_image

from ..conftest import RECIPES, run_scl, tiny_overrides

G = 8  # grid


def region(box, height, width) -> Region:
    x1, y1, x2, y2 = box
    pixels = np.zeros((height, width), dtype=bool)
    pixels[y1:y2, x1:x2] = True
    return Region(box, pixels)


def test_resize_is_the_old_torchvision_bicubic_tensor_resize():
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.functional import resize

    mask = (np.random.default_rng(0).random((37, 53)) > 0.5).astype(np.float32)
    want = resize(torch.from_numpy(mask)[None], [G, G], InterpolationMode.BICUBIC, antialias=False)[0]
    assert np.allclose(resize_mask(mask, G), want.numpy(), atol=1e-6)


def test_attention_planted_on_the_box_scores_one_and_uniform_scores_the_area_share():
    h = w = 64  # cells of 8x8 pixels: a box on whole cells resizes exactly
    regions = {"red circle": [region((0, 0, 32, 32), h, w)]}
    planted = np.zeros((G, G))
    planted[1:3, 1:3] = 1.0  # inside the box's 4x4 cells, away from the bicubic edge
    pieces = ["a", "Ġred", "Ġcir", "cle", "."]
    piece_maps = np.stack([np.ones((G, G)), planted, planted, planted, np.ones((G, G))])
    scores = AlignScores()
    score_image(scores, planted, pieces, piece_maps, regions, h, w)
    got = scores.means()
    assert got["global_box"] == pytest.approx(1.0, abs=1e-6) and got["local_pixel"] == pytest.approx(
        1.0, abs=1e-6
    )
    uniform = AlignScores()
    score_image(uniform, np.ones((G, G)), pieces, np.ones((5, G, G)), regions, h, w)
    share = resize_mask(np.pad(np.ones((32, 32)), ((0, 32), (0, 32))), G).sum() / G**2
    assert (
        uniform.means()["global_box"]
        == pytest.approx(share)
        == pytest.approx(uniform.means()["baseline_global_box"])
    )
    assert share == pytest.approx(0.25, abs=0.02)


def test_global_scores_skip_background_boxes_local_ones_do_not():
    h = w = 64
    background = region((0, 0, 64, 62), h, w)  # 97% of the image
    small = region((32, 32, 64, 64), h, w)
    att = np.zeros((G, G))
    att[5:7, 5:7] = 1.0  # inside `small` only
    scores = AlignScores()
    score_image(
        scores, att, ["Ġsky", "Ġdog"], np.stack([att, att]), {"sky": [background], "dog": [small]}, h, w
    )
    assert scores.global_box[0] == pytest.approx(1.0, abs=1e-6)  # background ignored: mass all in `small`
    assert scores.local_box[0] == pytest.approx(1.0, abs=1e-6)  # sky's box covers the attended cells too


def test_words_are_merged_from_pieces_as_the_script_does():
    maps = np.arange(6 * 2 * 2, dtype=float).reshape(6, 2, 2)
    words, merged = merge_words(["A", "Ġbook", "shelf", ",", "Ġfull", "."], maps)
    assert words == ["A", "bookshelf", "full"]
    assert np.array_equal(merged[1], maps[1] + maps[2]) and np.array_equal(merged[2], maps[4])
    assert phrase_index(words, "bookshelf full") == 1 and phrase_index(words, "missing") == 0


def write_sample(folder: Path, key: str, payload, size=(48, 32)) -> None:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "pkls").mkdir(exist_ok=True)
    Image.new("RGB", size, (200, 30, 30)).save(folder / "images" / f"{key}.jpg")
    (folder / "pkls" / f"{key}.pkl").write_bytes(pickle.dumps(payload))


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_the_unpickler_builds_arrays_and_refuses_anything_else(tmp_path):
    w, h = 48, 32
    good = {"caption": "a red square", "annotation": {"red square": [{"bbox_mask": [1.0, 2.0, 20.0, 30.0],
            "pixel_mask": np.ones((h, w), dtype=bool)}]}}  # fmt: skip
    write_sample(tmp_path / "ok", "0", good)
    sample = next(iter_align_bench(tmp_path / "ok"))
    assert sample.caption == "a red square" and sample.regions["red square"][0].box == (1, 2, 20, 30)
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"caption": Evil()}))
    with pytest.raises(DataError, match=r"evil.pkl: holds a posix.system"):
        read_pickle(tmp_path / "evil.pkl")
    (tmp_path / "od.pkl").write_bytes(pickle.dumps(__import__("collections").OrderedDict(a=1)))
    with pytest.raises(DataError, match="collections.OrderedDict"):
        read_pickle(tmp_path / "od.pkl")


@pytest.mark.slow
def test_scl_align_scores_a_checkpoint(tmp_path, shapes_root):
    run = tmp_path / "run"
    proc = run_scl("pretrain", str(RECIPES / "tiny.toml"), *tiny_overrides(shapes_root, run, steps=1))
    assert proc.returncode == 0, proc.stderr[-2000:]
    w, h = 64, 48
    for key, caption in (("0", "a red circle"), ("1", "two blue squares")):
        phrase = " ".join(caption.split()[1:])
        write_sample(tmp_path / "bench", key, {"caption": caption, "annotation": {phrase: [
            {"bbox_mask": [0, 0, 32, 24], "pixel_mask": np.pad(np.ones((24, 32), bool), ((0, 24), (0, 32)))}]}},
            size=(w, h))  # fmt: skip
    out = tmp_path / "align.json"
    proc = run_scl("align", "--ckpt", str(run), "--data", str(tmp_path / "bench"), "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["images"] == 2
    for key in ("global_box", "global_pixel", "local_box", "local_pixel"):
        assert 0.0 <= report["scores"][key] <= 1.0
        assert report["scores"][f"baseline_{key}"] == pytest.approx(0.25, abs=0.03)
    assert "global box" in proc.stdout and "uniform attention" in proc.stdout


def test_shapes_samples_carry_each_object_phrase_with_its_box_and_mask(shapes_root):
    from scl_cli.data.shapes import COLORS
    from scl_cli.data.shapes_align import iter_shapes_align

    samples = list(iter_shapes_align(shapes_root / "shapes", "test"))
    assert samples and all(isinstance(s.image, bytes) for s in samples)
    checked = 0
    for sample in samples:
        image = np.asarray(Image.open(io.BytesIO(sample.image)).convert("RGB"), dtype=np.float64)
        for phrase, regions in sample.regions.items():
            assert phrase in sample.caption  # the phrase is found among the caption's words
            color = COLORS[phrase.split()[1]]
            for r in regions:
                x1, y1, x2, y2 = r.box
                assert r.pixels.shape == image.shape[:2] and r.pixels[y1:y2, x1:x2].sum() == r.pixels.sum()
                # The mask lies on the object: its pixels are the object's colour (JPEG aside).
                assert np.abs(image[r.pixels].mean(0) - color).max() < 25, (sample.key, phrase)
                checked += 1
    assert checked >= len(samples)


def test_shapes_align_refuses_data_the_generator_does_not_reproduce(shapes_root):
    from scl_cli.data.shapes_align import shapes_align_sample

    record = {"id": "test-000000", "objects": [{"shape": "star", "color": "red", "size": "small", "row": 0, "col": 0},
                                               {"shape": "star", "color": "red", "size": "small", "row": 1, "col": 1},
                                               {"shape": "star", "color": "red", "size": "small", "row": 0, "col": 1}]}  # fmt: skip
    with pytest.raises(DataError, match="another version of `scl prepare shapes`"):
        shapes_align_sample(record, b"", seed=12345, image_size=128)


def test_scl_align_on_shapes(tmp_path, shapes_root):
    run = tmp_path / "run"
    proc = run_scl("pretrain", str(RECIPES / "tiny.toml"), *tiny_overrides(shapes_root, run, steps=1))
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = tmp_path / "align.json"
    proc = run_scl("align", "--ckpt", str(run), "--data", str(shapes_root / "shapes"), "--split", "val",
                   "--out", str(out))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["images"] > 0 and all(0.0 <= v <= 1.0 for v in report["scores"].values())
