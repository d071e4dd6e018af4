"""Video clips: check, sample frames, decode with decord, one crop for every frame of a clip.

Frame sampling follows Frozen-in-Time / the paper's code: the clip is cut into `num_frames` equal
segments and one frame is taken per segment, the middle one at evaluation and a random one in
training, so a clip's frames always cover its whole length in order.

Randomness comes from the caller's `random.Random` (one per sample), as for images, so any
sample's frames and crop can be reproduced without replaying the stream.
"""

from __future__ import annotations

import io
import random

import numpy as np
import torch
from PIL import Image

from scl_cli.data.transforms import ImageTransform, center_square_box, random_resized_crop_box

VIDEO_EXTENSIONS = ("mp4", "avi", "mkv", "webm", "mov", "m4v")  # file suffixes and shard member names


def is_video_member(name: str) -> bool:
    """Whether a shard member name ("mp4", "clip.mp4", "jpg", ...) holds a video clip."""
    return name.rsplit(".", 1)[-1].lower() in VIDEO_EXTENSIONS


class VideoError(ValueError):
    """A clip that cannot be used; `reason` is the short skip reason recorded by `scl prepare`."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def _unreadable(err: Exception) -> VideoError:
    first_line = str(err).splitlines()[0][:200] if str(err) else ""
    return VideoError("unreadable_video", first_line)


def _reader(data: bytes):
    """A decord reader over the bytes; `VideoError` for no bytes, bytes it cannot open or no frames."""
    import decord  # imported late: it loads FFmpeg, which image-only runs never need

    if not data:
        raise VideoError("empty_video", "0 bytes")
    try:
        reader = decord.VideoReader(io.BytesIO(data), num_threads=1)
    except Exception as err:  # decord raises its own DECORDError or RuntimeError for bad bytes
        raise _unreadable(err) from err
    if len(reader) < 1:
        raise VideoError("empty_video", "no frames")
    return reader


def check_video(data: bytes) -> bytes:
    """The clip's bytes unchanged when decord reads at least its first and last frames (what
    `scl prepare` stores for a video); `VideoError` otherwise."""
    reader = _reader(data)
    try:
        reader.get_batch([0, len(reader) - 1])
    except Exception as err:
        raise _unreadable(err) from err
    return data


def segment_frames(total: int, num_frames: int, rng: random.Random | None = None) -> list[int]:
    """Indices of `num_frames` frames out of `total`, one per equal segment: the frame nearest the
    segment's middle without `rng` (evaluation), a uniformly random one with it (training). A clip
    shorter than `num_frames` repeats frames, still in order.

    A middle that falls halfway between two frames (segments of an even length) goes to the frame
    nearer the middle of the clip, so the frames taken from a clip played backwards are the frames
    taken from the clip, backwards: rounding every tie down (8 frames, 4 segments -> 0, 2, 4, 6)
    would show a clip's last frame but never its first, and a model could then tell a clip from
    its reversal, or a motion from its opposite, without knowing the order of the frames. (A middle
    halfway between the clip's two middle frames, an odd number of frames out of an even number,
    cannot mirror itself and takes the later one.)"""
    if total < 1 or num_frames < 1:
        raise ValueError(f"need total >= 1 and num_frames >= 1, got {total}, {num_frames}")
    edges = np.linspace(0, total, num_frames + 1)
    out = []
    for start, end in zip(edges[:-1], edges[1:], strict=True):
        if rng is not None:
            lo, hi = int(start), max(int(start), int(np.ceil(end)) - 1)
            out.append(rng.randint(lo, hi))
        else:
            out.append(_nearest_toward_middle((start + end) / 2 - 0.5, (total - 1) / 2))
    return [min(max(i, 0), total - 1) for i in out]


def _nearest_toward_middle(position: float, middle: float) -> int:
    """The integer nearest `position`; a tie goes to the side of `middle`."""
    below = int(np.floor(position))
    if abs(position - below - 0.5) > 1e-9:
        return int(np.floor(position + 0.5))
    return below + 1 if below < middle else below


def decode_clip(
    data: bytes, num_frames: int, transform: ImageTransform, rng: random.Random | None = None
) -> torch.Tensor:
    """uint8 [num_frames, 3, S, S] from an encoded clip: frames by `segment_frames` (random within
    segments when `transform.augment`), then one crop box for all frames (random resized crop in
    training, the centre square at evaluation) so motion is not confused with camera jitter."""
    reader = _reader(data)
    total = len(reader)
    index = segment_frames(total, num_frames, rng if transform.augment else None)
    frames = reader.get_batch(index).asnumpy()  # [T, H, W, 3] uint8
    height, width = frames.shape[1:3]
    if transform.augment:
        box = random_resized_crop_box(width, height, rng or random.Random(), (transform.crop_min_scale, 1.0))
    else:
        box = center_square_box(width, height)
    size = (transform.image_size, transform.image_size)
    out = [
        np.asarray(Image.fromarray(frame).resize(size, Image.Resampling.BICUBIC, box=box), dtype=np.uint8)
        for frame in frames
    ]
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()
