"""Where training metrics go. Every run writes `RUN/metrics.jsonl` (`jsonl`); `log.loggers` names
the others (`tensorboard` built in). A logger is one class with `log(step, values)`,
`truncate_after(step)` (resuming at `step`) and `close()` (and, to show pictures,
`log_image(step, name, array)`), constructed with the run folder, and
made known by an entry point in the `scl_cli.loggers` group (or `register_logger` in-process):
adding one touches no trainer code."""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Protocol

from scl_cli.training.loggers.jsonl import METRICS_FILE, JsonlLogger

ENTRY_POINT_GROUP = "scl_cli.loggers"
_REGISTERED: dict[str, Any] = {}


class MetricLogger(Protocol):
    def log(self, step: int, values: dict[str, float]) -> None: ...

    def truncate_after(self, step: int) -> None: ...

    def close(self) -> None: ...


def register_logger(name: str, factory: Any) -> None:
    """Make a logger class (or factory taking the run folder) known in this process."""
    _REGISTERED[name] = factory


def logger_factory(name: str) -> Any:
    if name in _REGISTERED:
        return _REGISTERED[name]
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            return ep.load()
    known = sorted({"jsonl", *_REGISTERED, *(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))})
    raise ValueError(f"unknown logger {name!r} (log.loggers); known: {', '.join(known)}")


class MetricsLogger:
    """Fans every logged step out to `metrics.jsonl` and the named loggers. With `enabled=False`
    (non-zero ranks) nothing is written. A resumed run calls `truncate_after(step)` first."""

    def __init__(self, run_dir: Path, loggers: list[str] = (), enabled: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / METRICS_FILE
        self.enabled = enabled
        self.sinks: list[MetricLogger] = []
        if enabled:
            self.sinks = [JsonlLogger(self.run_dir)]
            self.sinks += [
                logger_factory(name)(self.run_dir) for name in dict.fromkeys(loggers) if name != "jsonl"
            ]

    def log(self, step: int, values: dict[str, Any]) -> None:
        """Record `values` (floats or 0-d tensors) at `step`."""
        if not self.enabled:
            return
        numbers = {name: _to_float(value) for name, value in values.items()}
        for sink in self.sinks:
            sink.log(step, numbers)

    def log_images(self, step: int, images: dict[str, Any]) -> None:
        """Pictures (uint8 arrays [H, W, 3]) for the loggers that show them (`log_image`)."""
        if not self.enabled:
            return
        for sink in self.sinks:
            log_image = getattr(sink, "log_image", None)
            if log_image is not None:
                for name, image in images.items():
                    log_image(step, name, image)

    def truncate_after(self, step: int) -> None:
        for sink in self.sinks:
            sink.truncate_after(step)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _to_float(value: Any) -> float:
    # float() also takes 0-d tensors; the sync it costs happens once per logged step.
    return float(value.item() if hasattr(value, "item") else value)


__all__ = ["METRICS_FILE", "MetricLogger", "MetricsLogger", "logger_factory", "register_logger"]
