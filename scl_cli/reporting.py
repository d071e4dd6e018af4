"""The one way engines tell the user what happens (DESIGN §2): engines never print.

`make_reporter()` gives rich progress bars on a terminal and plain, throttled single lines in logs
and CI. Progress, status and messages go to stderr; tables (results) go to stdout, so
`scl eval ... > report.txt` captures only results. `NullReporter` is for tests and library use.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Protocol, TextIO, runtime_checkable

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text


@runtime_checkable
class ProgressTask(Protocol):
    def advance(self, n: int = 1, **fields: float) -> None:
        """Count `n` more items done; `fields` (e.g. errors=3) are shown next to the count."""


@runtime_checkable
class Reporter(Protocol):
    """What engines report through."""

    def progress(self, description: str, total: int | None) -> AbstractContextManager[ProgressTask]:
        """Context manager yielding a `ProgressTask`; `total=None` when the count is unknown."""

    def step_status(self, step: int, total: int, fields: dict[str, float]) -> None:
        """Training position, e.g. fields {"loss": 3.2, "samples/s": 45.0}; may be called every step."""

    def info(self, msg: str) -> None: ...

    def warn(self, msg: str) -> None: ...

    def table(self, title: str, columns: list[str], rows: list[list]) -> None: ...

    def close(self) -> None:
        """End any live display (also done when the last step is reported)."""


def format_value(value: Any) -> str:
    """Short, stable rendering of a metric: 3.21, 45.0, 2.00e-05, 12345."""
    if isinstance(value, bool | int | str):
        return str(value)
    value = float(value)
    if value == 0 or value != value or value in (float("inf"), float("-inf")):
        return str(value)
    if abs(value) >= 1e4 or abs(value) < 1e-3:
        return f"{value:.2e}"
    text = f"{value:.4g}"
    return text if "." in text or "e" in text else text + ".0"


def format_fields(fields: dict[str, Any]) -> str:
    return " ".join(f"{name}={format_value(value)}" for name, value in fields.items())


# ----------------------------------------------------------------------------- null
class _NullTask:
    def advance(self, n: int = 1, **fields: float) -> None:
        pass


class NullReporter:
    """Reports nothing: for tests and for engines used as a library."""

    @contextmanager
    def progress(self, description: str, total: int | None) -> Iterator[ProgressTask]:
        yield _NullTask()

    def step_status(self, step: int, total: int, fields: dict[str, float]) -> None:
        pass

    def info(self, msg: str) -> None:
        pass

    def warn(self, msg: str) -> None:
        pass

    def table(self, title: str, columns: list[str], rows: list[list]) -> None:
        pass

    def close(self) -> None:
        pass


# ----------------------------------------------------------------------------- plain
class _PlainTask:
    """Prints `description done/total (pct%) fields` at each `every_fraction` of the total or
    `every_seconds`, whichever comes first."""

    def __init__(self, reporter: PlainReporter, description: str, total: int | None) -> None:
        self.reporter, self.description, self.total = reporter, description, total
        self.done = 0
        self.fields: dict[str, float] = {}
        self.started = self._last_time = time.monotonic()
        self._next_count = self._step_size()

    def _step_size(self) -> int:
        return max(1, int(self.total * self.reporter.every_fraction)) if self.total else 0

    def advance(self, n: int = 1, **fields: float) -> None:
        self.done += n
        self.fields.update(fields)
        now = time.monotonic()
        due_by_count = bool(self.total) and self.done >= self._next_count
        if due_by_count or now - self._last_time >= self.reporter.every_seconds:
            self._print()
            self._last_time = now
            while self.total and self._next_count <= self.done:
                self._next_count += self._step_size()

    def _print(self) -> None:
        count = (
            f"{self.done}/{self.total} ({100 * self.done // self.total}%)" if self.total else str(self.done)
        )
        self.reporter._line(
            " ".join(filter(None, [f"{self.description} {count}", format_fields(self.fields)]))
        )

    def finish(self) -> None:
        elapsed = time.monotonic() - self.started
        summary = format_fields(self.fields)
        self.reporter._line(
            f"{self.description} done: {self.done} in {elapsed:.1f}s" + (f" {summary}" if summary else "")
        )


class PlainReporter:
    """Timestamp-free single lines for logs and CI, e.g. `step 10/100 loss=3.21 samples/s=45.0`.

    Progress prints at most every `every_fraction` of the total or `every_seconds`; training
    status at most every `every_seconds` (plus the first and the last step). `quiet` keeps only
    warnings and tables.
    """

    def __init__(
        self,
        err: TextIO | None = None,
        out: TextIO | None = None,
        every_seconds: float = 10.0,
        every_fraction: float = 0.1,
        quiet: bool = False,
    ) -> None:
        self.err, self.out = err, out
        self.every_seconds, self.every_fraction, self.quiet = every_seconds, every_fraction, quiet
        self._last_status: float | None = None

    @contextmanager
    def progress(self, description: str, total: int | None) -> Iterator[ProgressTask]:
        if self.quiet:
            yield _NullTask()
            return
        task = _PlainTask(self, description, total)
        yield task
        task.finish()

    def step_status(self, step: int, total: int, fields: dict[str, float]) -> None:
        if self.quiet:
            return
        now = time.monotonic()
        if self._last_status is None or step >= total or now - self._last_status >= self.every_seconds:
            self._last_status = now
            self._line(" ".join(filter(None, [f"step {step}/{total}", format_fields(fields)])))

    def info(self, msg: str) -> None:
        if not self.quiet:
            self._line(msg)

    def warn(self, msg: str) -> None:
        self._line(f"warning: {msg}")

    def table(self, title: str, columns: list[str], rows: list[list]) -> None:
        cells = [[str(c) for c in columns]] + [[_cell(v) for v in row] for row in rows]
        widths = [max(len(r[i]) for r in cells if i < len(r)) for i in range(len(columns))]
        out = self.out or sys.stdout
        out.write(f"{title}\n")
        for row in cells:
            out.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)).rstrip() + "\n")
        out.flush()

    def close(self) -> None:
        pass

    def _line(self, text: str) -> None:
        # Resolved late so pytest's capsys and redirected streams are honoured.
        err = self.err or sys.stderr
        err.write(text + "\n")
        err.flush()


def _cell(value: Any) -> str:
    return (
        value
        if isinstance(value, str)
        else format_value(value)
        if isinstance(value, int | float)
        else str(value)
    )


# ----------------------------------------------------------------------------- rich
class _FieldsColumn(ProgressColumn):
    """Renders a task's extra fields as `name=value` pairs."""

    def render(self, task: Task) -> Text:
        return Text(format_fields(task.fields), style="cyan")


class _RichTask:
    def __init__(self, progress: Progress, task_id: TaskID) -> None:
        self._progress, self._id = progress, task_id

    def advance(self, n: int = 1, **fields: float) -> None:
        self._progress.update(self._id, advance=n, **fields)


class RichReporter:
    """Rich progress bars, status and messages on `status_console` (stderr); tables on `table_console` (stdout).

    All bars share one live display, so a progress bar may open while the training bar runs.
    """

    def __init__(
        self, status_console: Console | None = None, table_console: Console | None = None, quiet: bool = False
    ) -> None:
        self.console = status_console or Console(stderr=True)
        self.table_console = table_console or Console()
        self.quiet = quiet
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            _FieldsColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self._live_tasks = 0
        self._train_task: TaskID | None = None

    @contextmanager
    def progress(self, description: str, total: int | None) -> Iterator[ProgressTask]:
        if self.quiet:
            yield _NullTask()
            return
        task_id = self._add_task(description, total)
        try:
            yield _RichTask(self._progress, task_id)
        finally:
            self._remove_task(task_id)

    def step_status(self, step: int, total: int, fields: dict[str, float]) -> None:
        if self.quiet:
            return
        if self._train_task is None:
            self._train_task = self._add_task("train", total)
        self._progress.update(self._train_task, completed=step, total=total, **fields)
        if step >= total:
            self._progress.refresh()
            self._remove_task(self._train_task)
            self._train_task = None

    def info(self, msg: str) -> None:
        if not self.quiet:
            self.console.print(msg, markup=False, highlight=False)

    def warn(self, msg: str) -> None:
        self.console.print(Text(f"warning: {msg}", style="yellow"))

    def table(self, title: str, columns: list[str], rows: list[list]) -> None:
        table = Table(title=title)
        for column in columns:
            table.add_column(str(column))
        for row in rows:
            table.add_row(*(_cell(v) for v in row))
        self.table_console.print(table)

    def close(self) -> None:
        if self._train_task is not None:
            self._remove_task(self._train_task)
            self._train_task = None

    def _add_task(self, description: str, total: int | None) -> TaskID:
        if self._live_tasks == 0:
            self._progress.start()
        self._live_tasks += 1
        return self._progress.add_task(description, total=total)

    def _remove_task(self, task_id: TaskID) -> None:
        self._live_tasks -= 1
        if self._live_tasks == 0:
            # The last frame, with this bar in it, stays on screen.
            self._progress.stop()
        else:
            # Other bars keep running: leave a one-line record above them instead of a dead bar.
            task = next(t for t in self._progress.tasks if t.id == task_id)
            count = f"{int(task.completed)}/{int(task.total)}" if task.total else str(int(task.completed))
            summary = " ".join(filter(None, [task.description, count, "done", format_fields(task.fields)]))
            self.console.print(summary, markup=False, highlight=False)
        self._progress.remove_task(task_id)


# ----------------------------------------------------------------------------- choice
_CI_VARIABLES: Sequence[str] = ("CI", "GITHUB_ACTIONS", "GITLAB_CI", "BUILDKITE", "JENKINS_URL", "TF_BUILD")


def make_reporter(force_plain: bool = False, quiet: bool = False) -> Reporter:
    """Rich on an interactive terminal, plain lines when stderr is redirected, in CI or if forced."""
    interactive = sys.stderr.isatty() and os.environ.get("TERM") != "dumb"
    in_ci = any(os.environ.get(name) for name in _CI_VARIABLES)
    if force_plain or not interactive or in_ci:
        return PlainReporter(quiet=quiet)
    return RichReporter(quiet=quiet)


class StageProgress:
    """Adapts an engine's `progress(stage, done, total)` callback to a reporter's bars: one bar per
    stage, opened on the stage's first call and closed when the next stage starts or on `close()`."""

    def __init__(self, reporter: Reporter) -> None:
        self.reporter = reporter
        self._stage: str | None = None
        self._ctx: AbstractContextManager[ProgressTask] | None = None
        self._task: ProgressTask | None = None
        self._done = 0

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage != self._stage:
            self.close()
            self._stage, self._done = stage, 0
            self._ctx = self.reporter.progress(stage, total)
            self._task = self._ctx.__enter__()
        if self._task is not None and done > self._done:
            self._task.advance(done - self._done)
            self._done = done

    def close(self) -> None:
        if self._ctx is not None:
            self._ctx.__exit__(None, None, None)
        self._ctx, self._task, self._stage = None, None, None

    def __enter__(self) -> StageProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
