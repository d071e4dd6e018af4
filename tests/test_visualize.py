"""`scl visualize`: attention maps drawn where they are, words from sub-word pieces, clips one
row per frame, the local-SCL view; one-line errors for bad input."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from scl_cli.figures.heatmaps import Panel, heatmap_grid

from .conftest import RECIPES, run_scl, tiny_overrides


def test_a_planted_map_is_drawn_over_its_corner(tmp_path):
    picture = Image.new("RGB", (200, 200), (255, 255, 255))
    heat = np.zeros((4, 4))
    heat[0, 0] = 1.0  # top-left cell hot
    out = heatmap_grid([[Panel("x", picture, heat, smooth=False)]], tmp_path / "h.png", size=3)
    drawn = np.asarray(Image.open(out).convert("RGB")).astype(float)
    h, w = drawn.shape[:2]
    # the panel fills most of the figure: compare the redness of its top-left and bottom-right corners
    top_left = drawn[int(0.2 * h) : int(0.3 * h), int(0.15 * w) : int(0.25 * w)]
    bottom_right = drawn[int(0.75 * h) : int(0.85 * h), int(0.75 * w) : int(0.85 * w)]
    redness = lambda a: (a[..., 0] - a[..., 2]).mean()  # noqa: E731
    assert redness(top_left) > redness(bottom_right) + 80


@pytest.fixture(scope="module")
def tiny_run(shapes_root, tmp_path_factory):
    run = tmp_path_factory.mktemp("vis") / "run"
    proc = run_scl("pretrain", str(RECIPES / "tiny.toml"), *tiny_overrides(shapes_root, run, steps=1))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return run


@pytest.mark.slow
def test_visualize_an_image_and_a_clip(tiny_run, shapes_root, tmp_path):
    image = tmp_path / "shape.png"
    Image.new("RGB", (60, 40), (240, 240, 240)).save(image)
    out = tmp_path / "att.png"
    proc = run_scl("visualize", "--ckpt", str(tiny_run), "--image", str(image), "--text", "a red circle, left.",
                   "--out", str(out))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "4 words: a red circle left)" in proc.stdout + proc.stderr  # "," and "." skipped
    assert Image.open(out).size[0] > 500
    clip = next((shapes_root / "shapes").glob("clips/**/*.tar"))
    import tarfile

    with tarfile.open(clip) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".mp4"))
        (tmp_path / "clip.mp4").write_bytes(tar.extractfile(member).read())
    proc = run_scl("visualize", "--ckpt", str(tiny_run), "--image", str(tmp_path / "clip.mp4"), "--text",
                   "a shape moves", "--frames", "2", "--out", str(tmp_path / "clip.png"), "--masked")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "clip.png").is_file()


def test_bad_input_is_one_line(tiny_run, tmp_path):
    (tmp_path / "x.jpg").write_bytes(b"not an image")
    proc = run_scl(
        "visualize", "--ckpt", str(tiny_run), "--image", str(tmp_path / "x.jpg"), "--text", "a cat"
    )
    assert proc.returncode == 2 and "not an image" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_scl("visualize", "--ckpt", str(tiny_run), "--image", str(tmp_path / "x.jpg"), "--text", " ")
    assert proc.returncode == 2 and "--text is empty" in proc.stderr
