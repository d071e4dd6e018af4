"""`RUN/metrics.jsonl`: one JSON line per logged step. Every run writes it: resume, `scl plot` and
scripts read it."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from scl_cli.io.atomic import atomic_write_text

METRICS_FILE = "metrics.jsonl"


class JsonlLogger:
    """Appends `{"step": N, name: value, ...}` lines; non-finite values are written as `null`, so
    every line stays strict JSON. The file is opened on the first `log`, and every line is flushed
    at once: a killed run keeps every line written before the kill."""

    name = "jsonl"

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / METRICS_FILE
        self._file: Any = None

    def log(self, step: int, values: dict[str, float]) -> None:
        if self._file is None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")
        record = {"step": step} | {k: (v if math.isfinite(v) else None) for k, v in values.items()}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def truncate_after(self, step: int) -> None:
        """Drop lines with a step above `step` (and any torn last line)."""
        self.close()
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
        atomic_write_text(self.path, "".join(kept))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
