"""Video clips: frame sampling, decoding with one crop per clip, bad clips, shapes clips, mixed batches."""

from __future__ import annotations

import random
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from scl_cli.config.recipe import VisionConfig
from scl_cli.data.shapes_clips import DIRECTIONS, generate_clip
from scl_cli.data.stream import build_train_loader
from scl_cli.data.tokenizer import load_tokenizer
from scl_cli.data.transforms import ImageTransform
from scl_cli.data.video import VideoError, check_video, decode_clip, segment_frames
from scl_cli.model.vision import VisionEncoder


def counting_clip(frames: int, size: int = 32) -> bytes:
    """A clip whose frame i is a flat grey of level 20 * i (readable back from any crop)."""
    import io

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=8)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv444p"
        stream.options = {"crf": "0", "g": "1"}
        for i in range(frames):
            img = np.full((size, size, 3), 20 * i, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buffer.getvalue()


def test_segment_frames_middle_at_eval_random_within_segments_in_training() -> None:
    assert segment_frames(12, 4) == [1, 4, 7, 10]  # the middle frame of each segment of three
    # Segments of two frames: each middle is a tie, broken toward the middle of the clip.
    assert segment_frames(8, 4) == [1, 3, 4, 6]
    assert segment_frames(100, 4) == [12, 37, 62, 87]
    rng = random.Random(0)
    for _ in range(50):
        picks = segment_frames(20, 4, rng)
        for k, i in enumerate(picks):
            assert 5 * k <= i < 5 * (k + 1)  # one frame from each fifth of the clip, in order
    assert segment_frames(2, 4) == sorted(segment_frames(2, 4))  # short clips repeat frames, in order
    assert all(0 <= i < 2 for i in segment_frames(2, 4))


def test_evaluation_frames_of_a_reversed_clip_are_the_frames_of_the_clip_reversed() -> None:
    # Otherwise a clip could be told from its reversal (and a motion from its opposite) by which end
    # frames were taken, without the order of frames: 8 frames gave 0, 2, 4, 6 (issue 15).
    for total in range(1, 41):
        for frames in range(1, 9):
            picks = segment_frames(total, frames)
            assert picks == sorted(picks) and all(0 <= i < total for i in picks)
            if total % 2 == 0 and frames % 2:  # the middle pick falls between the two middle frames:
                continue  # one frame cannot be both; the others still mirror each other
            assert [total - 1 - i for i in reversed(picks)] == picks, (total, frames)
    picks = segment_frames(8, 3)
    assert picks == [1, 4, 6] and picks[0] == 7 - picks[2]


def test_decode_clip_takes_the_segment_frames_and_one_crop_for_all() -> None:
    data = counting_clip(8)
    clip = decode_clip(data, 4, ImageTransform(16, augment=False))
    assert clip.shape == (4, 3, 16, 16) and clip.dtype == torch.uint8
    levels = clip.float().mean(dim=(1, 2, 3)) / 20
    assert torch.allclose(
        levels, torch.tensor([1.0, 3.0, 4.0, 6.0]), atol=0.2
    )  # the frames segment_frames names

    # A training crop is one box for every frame: the same pixels of a still scene in every frame.
    still = generate_clip(0, "train", 0, 64)[0]
    for seed in range(3):
        frames = decode_clip(
            still, 4, ImageTransform(32, augment=True, crop_min_scale=0.3), random.Random(seed)
        )
        background = frames[:, :, :2, :2].float()  # a corner the mover never reaches in every frame
        assert frames.shape == (4, 3, 32, 32)
        assert (background - background[0]).abs().max() <= 3


def test_bad_clips_raise_with_reason() -> None:
    with pytest.raises(VideoError) as err:
        check_video(b"")
    assert err.value.reason == "empty_video"
    with pytest.raises(VideoError) as err:
        check_video(b"\x00not a video" * 100)
    assert err.value.reason == "unreadable_video"
    data = counting_clip(3)
    assert check_video(data) is data


def test_shapes_clip_caption_needs_the_motion() -> None:
    a = generate_clip(0, "train", 5, 64)
    assert a == generate_clip(0, "train", 5, 64)  # same seed, same bytes
    mp4, record = a
    direction = record["motion"]["direction"]
    assert all(direction_word in c for c in record["captions"]
               for direction_word in [{"left": "left", "right": "right", "up": "up", "down": "down"}[direction]])  # fmt: skip
    assert len(record["foils"]) == len(record["captions"])
    for caption, foil in zip(record["captions"], record["foils"], strict=True):
        assert caption != foil and caption.split()[:3] == foil.split()[:3]

    # The mover's colour centroid goes the caption's way between the first and last frame.
    clip = decode_clip(mp4, 8, ImageTransform(64, augment=False)).float()
    from scl_cli.data.shapes import COLORS

    color = torch.tensor(COLORS[record["motion"]["color"]], dtype=torch.float32)[None, :, None, None]
    near = ((clip - color).abs().sum(1) < 60).float()  # [T, H, W]
    ys, xs = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    centroid = [((near[t] * xs).sum() / near[t].sum(), (near[t] * ys).sum() / near[t].sum()) for t in (0, 7)]
    dx, dy = DIRECTIONS[direction]
    moved = (centroid[1][0] - centroid[0][0], centroid[1][1] - centroid[0][1])
    assert moved[0] * dx + moved[1] * dy > 10


def test_temporal_embedding_gets_a_zero_gradient_on_image_steps() -> None:
    enc = VisionEncoder(VisionConfig(image_size=16, patch_size=8, width=16, layers=1, heads=2))
    images = torch.randn(2, 1, 3, 16, 16)
    enc(images).tokens.sum().backward()
    assert enc.temporal_embedding.grad is None  # image-only runs: unreachable, so it is frozen
    enc.images_share_steps_with_clips = True  # a run mixing image and clip steps
    with torch.no_grad():
        before = enc(images).tokens
    enc(images).tokens.sum().backward()
    assert enc.temporal_embedding.grad is not None and torch.count_nonzero(enc.temporal_embedding.grad) == 0
    with torch.no_grad():
        enc.temporal_embedding.normal_()
        assert torch.equal(enc(images).tokens, before)  # an exact zero: image outputs never change


@pytest.mark.slow
def test_mixed_batches_are_homogeneous_and_resume_exactly(shapes_root: Path) -> None:
    tok = load_tokenizer("dataset", shapes_root, "shapes")

    def loader(start: int = 0):
        return iter(build_train_loader(shapes_root, ["shapes", "shapes:clips"], [1.0, 1.0], "train", tok, 32,
                                          16, 4, seed=3, num_workers=0, start_batch=start, num_frames=3))  # fmt: skip

    batches = [next(it) for it in [loader()] for _ in range(8)]
    frames = [b["images"].shape[1] for b in batches]
    assert set(frames) == {1, 3}  # both kinds within 8 batches (p = 1 - 2 * 0.5**8)
    for b in batches:
        assert b["images"].shape[0] == 4 and b["images"].dtype == torch.uint8
    resumed = loader(start=5)
    for b in batches[5:]:
        again = next(resumed)
        assert torch.equal(again["images"], b["images"]) and torch.equal(again["index"], b["index"])
