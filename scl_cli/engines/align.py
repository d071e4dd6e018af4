"""Engine of `scl align`: ALIGN-BENCH box and pixel scores of a checkpoint (`evaluation.align`),
globally and per annotated phrase, with the uniform-attention baseline."""

from __future__ import annotations

import io
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from scl_cli.data.align_bench import is_align_bench, iter_align_bench
from scl_cli.data.shapes_align import is_shapes, iter_shapes_align
from scl_cli.evaluation.align import AlignScores, caption_attention, score_image
from scl_cli.inference import SCL
from scl_cli.io.atomic import atomic_write_json
from scl_cli.reporting import NullReporter, Reporter


@dataclass
class AlignReport:
    checkpoint: str
    data: str
    images: int
    seconds: float
    scores: dict[str, float] = field(default_factory=dict)  # global_box, ..., baseline_local_pixel

    def rows(self) -> list[list[str]]:
        s = self.scores
        return [[f"{scope} {kind}", f"{100 * s[f'{scope}_{kind}']:.2f}", f"{100 * s[f'baseline_{scope}_{kind}']:.2f}"]
                for scope in ("global", "local") for kind in ("box", "pixel")]  # fmt: skip

    def write_json(self, path: Path) -> None:
        atomic_write_json(path, asdict(self))


def align(
    ckpt: Path,
    data: Path,
    limit: int | None = None,
    device: str = "auto",
    reporter: Reporter | None = None,
    split: str = "test",
) -> AlignReport:
    """Score `ckpt` on the ALIGN-BENCH folder `data` (images/ + pkls/), or on `split` of a prepared
    shapes data set (boxes and masks drawn again from its generator)."""
    reporter = reporter or NullReporter()
    started = time.perf_counter()
    scl = SCL.from_pretrained(ckpt, device=device)
    size = scl.model_config.vision.image_size
    scores = AlignScores()
    count = 0
    with reporter.progress("align", limit) as task:
        samples = (iter_shapes_align(data, split, limit) if is_shapes(data) and not is_align_bench(data)
                   else iter_align_bench(data, limit))  # fmt: skip
        for sample in samples:
            count += _score_sample(scl, sample, size, scores)
            task.advance()
    return AlignReport(str(scl.config.get("checkpoint", ckpt)), str(data), count,
                       time.perf_counter() - started, scores.means())  # fmt: skip


def _score_sample(scl: SCL, sample, size: int, scores: AlignScores) -> int:
    with Image.open(io.BytesIO(sample.image) if isinstance(sample.image, bytes) else sample.image) as opened:
        image = opened.convert("RGB")
    width, height = image.size
    # Squashed to the model's square, as the scripts' Resize((size, size)) does (no crop).
    squashed = image.resize((size, size), Image.Resampling.BICUBIC)
    pixels = torch.from_numpy(np.asarray(squashed, dtype=np.uint8).copy()).permute(2, 0, 1)
    global_map, pieces, piece_maps = caption_attention(
        scl.module, scl.tokenizer, pixels, sample.caption, scl.device, scl.dtype
    )
    score_image(scores, global_map, pieces, piece_maps, sample.regions, height, width)
    return 1
