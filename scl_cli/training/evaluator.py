"""Evaluation during training (`[eval]` in a recipe): every `eval.every` steps and at the end, the
probe of `evaluation.probe` (zero-shot ITC retrieval both ways, ITM accuracy on held-out pairs) on
rank 0, logged as `eval/...` on that step's metrics line; the best checkpoint by `eval.best` is
copied to RUN/best/; with `eval.pictures`, a retrieval contact sheet and an attention heat map go
to TensorBoard. Other ranks go on training (the probe has no collectives), and wait at the next
gradient all-reduce.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from scl_cli.config.recipe import EvalConfig
from scl_cli.data.tokenizer import TextTokenizer
from scl_cli.errors import UsageError
from scl_cli.evaluation.align import caption_attention, merge_words
from scl_cli.evaluation.probe import ProbeSet, load_probe_set, probe
from scl_cli.figures.heatmaps import Panel, chunk_rows, heatmap_grid
from scl_cli.io.checkpoints import CONFIG_FILE, write_checkpoint_dir
from scl_cli.reporting import Reporter
from scl_cli.search.contact_sheet import Tile, contact_sheet
from scl_cli.training.loggers import MetricsLogger
from scl_cli.training.runtime import Runtime

BEST_DIR = "best"


class InTrainingEval:
    def __init__(
        self,
        cfg: EvalConfig,
        model: torch.nn.Module,
        tokenizer: TextTokenizer,
        runtime: Runtime,
        run_dir: Path,
        data_root: Path,
        dataset: str,
        frames: int,
        config: dict[str, Any],
        extra_files: dict[str, Path],
        metrics: MetricsLogger,
        reporter: Reporter,
        resuming: bool,
    ) -> None:
        self.cfg, self.model, self.tokenizer, self.rt = cfg, model, tokenizer, runtime
        self.run_dir, self.data_root, self.dataset, self.frames = (
            Path(run_dir),
            Path(data_root),
            dataset,
            frames,
        )
        self.config, self.extra_files, self.metrics, self.reporter = config, extra_files, metrics, reporter
        self.probe_set: ProbeSet | None = None
        self.best: float | None = self._saved_best() if resuming else None

    def due(self, step: int, at_end: bool) -> bool:
        return self.cfg.every > 0 and (step % self.cfg.every == 0 or at_end)

    def _saved_best(self) -> float | None:
        config = self.run_dir / BEST_DIR / CONFIG_FILE
        if not config.is_file():
            return None
        return (json.loads(config.read_text(encoding="utf-8")).get("best") or {}).get("value")

    def __call__(self, step: int) -> dict[str, float]:
        """The probe's metrics at `step` as `eval/NAME` (rank 0; other ranks get nothing)."""
        if not self.rt.is_main:
            return {}
        model = self.model
        if self.probe_set is None:
            vision, text = model.config.vision, model.config.text
            self.probe_set = load_probe_set(self.data_root, self.dataset, self.cfg.split, self.cfg.images,
                                            self.tokenizer, vision.image_size, text.max_len, self.frames,
                                            self.cfg.seed)  # fmt: skip
        was_training = model.training
        model.eval()
        try:
            with self.rt.autocast():
                values = {f"eval/{k}": v for k, v in probe(model, self.probe_set, self.rt.device).items()}
                if self.cfg.pictures:
                    self._pictures(step)
        finally:
            model.train(was_training)
        if self.cfg.best:
            if self.cfg.best not in values:
                raise UsageError(
                    f"eval.best {self.cfg.best!r} is not an evaluation metric ({', '.join(values)})"
                )
            value = values[self.cfg.best]
            if self.best is None or value > self.best:
                self.best = value
                record = {**self.config, "step": step, "best": {"metric": self.cfg.best, "value": value}}
                write_checkpoint_dir(
                    self.run_dir / BEST_DIR, step, model, record, extra_files=self.extra_files
                )
        return values

    @torch.no_grad()
    def _pictures(self, step: int) -> None:
        """The first probe caption's top 8 images by ITC, and its attention over its own image."""
        assert self.probe_set is not None
        probe_set, model, device = self.probe_set, self.model, self.rt.device
        from scl_cli.model.preprocess import to_model_input

        query = probe_set.captions[0]
        ids, mask = probe_set.ids[:1].to(device), probe_set.mask[:1].to(device)
        text = model.itc_text(model.encode_text(ids, mask), mask).float()
        images = torch.cat([
            model.itc_image(model.encode_image(to_model_input(probe_set.pixels[rows].to(device)))).float()
            for rows in torch.arange(len(probe_set)).split(64)
        ])  # fmt: skip
        order = (images @ text[0]).argsort(descending=True)[:8].tolist()
        tiles = [Tile(probe_set.pixels[i], f"#{r + 1}" + (" (its own image)" if i == 0 else ""), probe_set.captions[i])
                 for r, i in enumerate(order)]  # fmt: skip
        frame = probe_set.pixels[0, 0]
        shown = Image.fromarray(frame.permute(1, 2, 0).numpy())
        global_map, pieces, piece_maps = caption_attention(model, self.tokenizer, frame, query, device)
        words, word_maps = merge_words(pieces, piece_maps)
        panels = [Panel("image", shown), Panel("global", shown, global_map)]
        panels += [Panel(w, shown, m) for w, m in zip(words, word_maps, strict=True)]
        with tempfile.TemporaryDirectory() as tmp:
            sheet = contact_sheet(tiles, Path(tmp) / "sheet.png", f"step {step}: {query}", 96)
            heat = heatmap_grid(chunk_rows(panels, 5), Path(tmp) / "heat.png", query, size=1.8)
            self.metrics.log_images(step, {"eval/retrieval": _rgb(sheet), "eval/attention": _rgb(heat)})


def _rgb(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))
