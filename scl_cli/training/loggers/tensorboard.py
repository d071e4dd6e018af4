"""TensorBoard scalars under `RUN/tensorboard/`."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

TENSORBOARD_DIR = "tensorboard"


class TensorBoardLogger:
    name = "tensorboard"

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self._writer: Any = None
        self._purge_step: int | None = None
        self._off = False

    def log(self, step: int, values: dict[str, float]) -> None:
        writer = self._tensorboard_writer()
        if writer is None:
            return
        for name, value in values.items():
            writer.add_scalar(name, value, step)
        writer.flush()

    def log_image(self, step: int, name: str, image: Any) -> None:
        """An RGB uint8 array [H, W, 3] as a TensorBoard image."""
        writer = self._tensorboard_writer()
        if writer is not None:
            writer.add_image(name, image, step, dataformats="HWC")
            writer.flush()

    def truncate_after(self, step: int) -> None:
        # purge_step hides the events of an interrupted run beyond the resumed step.
        self.close()
        self._purge_step = step + 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _tensorboard_writer(self) -> Any:
        if self._off:
            return None
        if self._writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                warnings.warn(f"TensorBoard logging is off: {e}", stacklevel=3)
                self._off = True
                return None
            self._writer = SummaryWriter(str(self.run_dir / TENSORBOARD_DIR), purge_step=self._purge_step)
        return self._writer
