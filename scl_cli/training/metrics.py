"""Training metrics: one JSON line per logged step in `RUN/metrics.jsonl`, plus TensorBoard scalars."""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


class MetricsLogger:
    """Appends `{"step": N, name: value, ...}` lines and mirrors them to TensorBoard.

    Non-finite values are written as `null` so every line stays strict JSON. With `enabled=False`
    (non-zero ranks) nothing is written. Files are opened on the first `log`, so a resumed run
    calls `truncate_after(step)` first.
    """

    def __init__(self, run_dir: Path, tensorboard: bool, enabled: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / METRICS_FILE
        self.tensorboard = tensorboard
        self.enabled = enabled
        self._file: Any = None
        self._writer: Any = None
        self._purge_step: int | None = None

    def log(self, step: int, values: dict[str, float]) -> None:
        """Record `values` (floats or 0-d tensors) at `step`; each line is flushed at once."""
        if not self.enabled:
            return
        numbers = {name: _to_float(value) for name, value in values.items()}
        if self._file is None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")
        record = {"step": step} | {k: (v if math.isfinite(v) else None) for k, v in numbers.items()}
        # A killed run keeps every line written before the kill.
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

        writer = self._tensorboard_writer()
        if writer is not None:
            for name, value in numbers.items():
                writer.add_scalar(name, value, step)
            writer.flush()

    def truncate_after(self, step: int) -> None:
        """Drop lines with a step above `step` (and any torn last line): for resuming at `step`."""
        if not self.enabled:
            return
        self._close_file()
        self._purge_step = step + 1
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
                kept.append(line + "\n")
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(kept), encoding="utf-8")
        os.replace(tmp, self.path)

    def close(self) -> None:
        self._close_file()
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _tensorboard_writer(self) -> Any:
        if not self.tensorboard:
            return None
        if self._writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                warnings.warn(f"TensorBoard logging is off: {e}", stacklevel=3)
                self.tensorboard = False
                return None
            # purge_step hides the events of an interrupted run beyond the resumed step.
            self._writer = SummaryWriter(str(self.run_dir / TENSORBOARD_DIR), purge_step=self._purge_step)
        return self._writer


def _to_float(value: Any) -> float:
    # float() also takes 0-d tensors; the sync it costs happens once per logged step.
    return float(value.item() if hasattr(value, "item") else value)
