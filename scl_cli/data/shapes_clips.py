"""Short clips of moving shapes, for video-text pre-training and retrieval on CPU.

A clip shows one to three shapes on a light background; exactly one of them moves in a straight
line (left, right, up or down) across the frame while the others stay still. Its captions name the
moving shape and its direction ("a red circle moves to the left"), so telling the right caption
from its `foil` (the same words with the opposite direction) needs the order of the frames, not
any single frame. Like the images, every clip is drawn from a generator seeded by
(seed, split, index): any clip can be regenerated alone, with the same bytes.
"""

from __future__ import annotations

import io
import random

import numpy as np
from PIL import Image

from scl_cli.data.shapes import COLORS, SHAPES, Scene, ShapeObject, render_scene

DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}
_PHRASE = {"left": "moves to the left", "right": "moves to the right", "up": "moves up", "down": "moves down"}
CLIP_FRAMES = 8
CLIP_FPS = 8
CLIP_GRID = 3  # clips keep a 3x3 layout: a mover sweeps three cells, so its direction shows in any two frames


def clip_rng(seed: int, split: str, index: int) -> random.Random:
    return random.Random(f"shapes-clips/{seed}/{split}/{index}")


def motion_caption(mover: ShapeObject, direction: str, still: list[ShapeObject], template: int) -> str:
    what = f"a {mover.size} {mover.color} {mover.shape}" if template % 2 else f"a {mover.color} {mover.shape}"
    text = f"{what} {_PHRASE[direction]}"
    if still and template >= 2:
        others = " and ".join(f"a {o.color} {o.shape}" for o in still)
        verb = "stays" if len(still) == 1 else "stay"
        text += f" while {others} {verb} still"
    return text + "."


def sample_clip(rng: random.Random) -> tuple[ShapeObject, str, list[ShapeObject], tuple[int, int, int]]:
    """(moving shape, its direction, the still shapes, background). The mover sweeps its whole row
    (left/right) or column (up/down); still shapes sit off that line so nothing overlaps."""
    direction = rng.choice(list(DIRECTIONS))
    line = rng.randrange(3)  # row for horizontal motion, column for vertical
    mover = ShapeObject(rng.choice(SHAPES), rng.choice(list(COLORS)), rng.choice(("small", "large")),
                        line if direction in ("left", "right") else 0,
                        line if direction in ("up", "down") else 0)  # fmt: skip
    free = [(r, c) for r in range(3) for c in range(3)
            if (r != line if direction in ("left", "right") else c != line)]  # fmt: skip
    still = [
        ShapeObject(rng.choice(SHAPES), rng.choice(list(COLORS)), rng.choice(("small", "large")), r, c)
        for r, c in rng.sample(free, rng.randint(0, 2))
    ]
    background = tuple(min(255, 238 + rng.randint(-10, 10)) for _ in range(3))
    return mover, direction, still, background  # type: ignore[return-value]


def render_clip(
    mover: ShapeObject,
    direction: str,
    still: list[ShapeObject],
    background: tuple[int, int, int],
    size: int,
    frames: int = CLIP_FRAMES,
) -> list[Image.Image]:
    """The clip's frames: the mover goes from one end of its line to the other in equal steps."""
    dx, dy = DIRECTIONS[direction]
    out = []
    for f in range(frames):
        # Position along the line in grid cells, from cell 0 to cell 2 (or back), centre to centre.
        t = f / (frames - 1)
        along = 2 * t if (dx + dy) > 0 else 2 * (1 - t)
        cell = min(int(along + 0.5), 2)
        offset = (along - cell) / 0.5  # share of the free room; render_scene scales it down
        moved = ShapeObject(mover.shape, mover.color, mover.size,
                            cell if dy else mover.row, cell if dx else mover.col)  # fmt: skip
        shift = (offset if dx else 0.0, offset if dy else 0.0)
        scene = Scene((moved, *still), background, (shift, *[(0.0, 0.0)] * len(still)))
        out.append(render_scene(scene, size, grid=CLIP_GRID))
    return out


def encode_mp4(frames: list[Image.Image], fps: int = CLIP_FPS) -> bytes:
    """H.264, every frame a key frame at near-lossless quality: small clips decode exactly the same
    everywhere and the last frames keep their colours (inter-coded MPEG-4 washed them out)."""
    import av  # imported late: only `scl prepare shapes` writes videos

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames[0].size
        stream.pix_fmt = "yuv444p"
        stream.options = {"crf": "8", "preset": "fast", "g": "1", "threads": "1"}
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.asarray(image), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def generate_clip(seed: int, split: str, index: int, size: int) -> tuple[bytes, dict]:
    """MP4 bytes and the JSON record (`id`, `captions`, `foils`, `motion`, `objects`) of clip `index`."""
    rng = clip_rng(seed, split, index)
    mover, direction, still, background = sample_clip(rng)
    captions = [motion_caption(mover, direction, still, t) for t in range(4 if still else 2)]
    foils = [motion_caption(mover, OPPOSITE[direction], still, t) for t in range(4 if still else 2)]
    record = {
        "id": f"clip-{split}-{index:06d}",
        "captions": captions,
        "foils": foils,
        "motion": {"shape": mover.shape, "color": mover.color, "size": mover.size, "direction": direction},
        "objects": [o.to_json() for o in still],
    }
    return encode_mp4(render_clip(mover, direction, still, background, size)), record
