"""Reporters: plain lines for logs, rich bars on a console, nothing from the null one."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from scl_cli.reporting import (
    NullReporter,
    PlainReporter,
    Reporter,
    RichReporter,
    format_value,
    make_reporter,
)


def plain(**kwargs) -> tuple[PlainReporter, io.StringIO, io.StringIO]:
    err, out = io.StringIO(), io.StringIO()
    return PlainReporter(err=err, out=out, **kwargs), err, out


def test_plain_step_status_lines_hold_the_fields() -> None:
    reporter, err, out = plain(every_seconds=0)
    reporter.step_status(10, 100, {"loss": 3.2134, "samples/s": 45.0})
    reporter.step_status(100, 100, {"loss": 1.5, "samples/s": 50.25})
    assert err.getvalue().splitlines() == [
        "step 10/100 loss=3.213 samples/s=45.0",
        "step 100/100 loss=1.5 samples/s=50.25",
    ]
    assert out.getvalue() == ""


def test_plain_step_status_is_throttled_but_keeps_first_and_last() -> None:
    reporter, err, _ = plain(every_seconds=3600)
    for step in range(1, 101):
        reporter.step_status(step, 100, {"loss": 1.0})
    assert [line.split()[1] for line in err.getvalue().splitlines()] == ["1/100", "100/100"]


def test_plain_progress_prints_every_tenth() -> None:
    reporter, err, _ = plain(every_seconds=3600)
    with reporter.progress("shards", total=50) as task:
        for _ in range(50):
            task.advance(errors=0)
    lines = err.getvalue().splitlines()
    assert lines[0] == "shards 5/50 (10%) errors=0"
    assert len(lines) == 11 and lines[-1].startswith("shards done: 50 in ")


def test_plain_progress_without_total_and_quiet() -> None:
    reporter, err, _ = plain(every_seconds=0)
    with reporter.progress("samples", total=None) as task:
        task.advance(3)
    assert err.getvalue().splitlines()[0] == "samples 3"

    reporter, err, out = plain(every_seconds=0, quiet=True)
    with reporter.progress("samples", total=2) as task:
        task.advance(2)
    reporter.step_status(1, 1, {"loss": 1.0})
    reporter.info("hidden")
    reporter.warn("shown")
    reporter.table("R@1", ["task", "score"], [["f30k", 0.5]])
    assert err.getvalue() == "warning: shown\n"
    assert "f30k" in out.getvalue()


def test_plain_table_and_messages() -> None:
    reporter, err, out = plain()
    reporter.info("loading shards")
    reporter.warn("3 samples skipped")
    reporter.table("retrieval", ["split", "R@1", "R@5"], [["test", 71.25, 91.5], ["val", 70, 90]])
    assert err.getvalue().splitlines() == ["loading shards", "warning: 3 samples skipped"]
    assert out.getvalue().splitlines() == [
        "retrieval",
        "split  R@1    R@5",
        "test   71.25  91.5",
        "val    70     90",
    ]


def test_format_value() -> None:
    assert [format_value(v) for v in (3.21, 45.0, 2e-5, 123456.0, 7, 0.0)] == [
        "3.21",
        "45.0",
        "2.00e-05",
        "1.23e+05",
        "7",
        "0.0",
    ]


@pytest.mark.parametrize("terminal", [False, True])
def test_rich_reporter_runs_on_a_string_console(terminal: bool) -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, width=120, force_terminal=terminal)
    reporter = RichReporter(status_console=console, table_console=console)
    for step in range(1, 5):
        reporter.step_status(step, 4, {"loss": 2.0 / step, "samples/s": 30.0})
        if step == 2:
            # A bar opened while the training bar is live shares its display.
            with reporter.progress("eval", total=3) as task:
                for _ in range(3):
                    task.advance(acc=0.5)
    with reporter.progress("index", total=None) as task:
        task.advance(10)
    reporter.info("done [not markup]")
    reporter.warn("careful")
    reporter.table("scores", ["task", "R@1"], [["coco", 0.61]])
    reporter.close()
    text = buffer.getvalue()
    for fragment in ("train", "loss=0.5", "eval", "done [not markup]", "warning: careful", "scores", "coco"):
        assert fragment in text


def test_rich_close_ends_an_unfinished_training_bar() -> None:
    console = Console(file=io.StringIO())
    reporter = RichReporter(console, console)
    reporter.step_status(1, 10, {"loss": 1.0})
    reporter.close()
    reporter.step_status(2, 10, {"loss": 1.0})
    reporter.close()


def test_null_reporter_is_silent(capsys: pytest.CaptureFixture) -> None:
    reporter = NullReporter()
    with reporter.progress("x", 3) as task:
        task.advance()
    reporter.step_status(1, 1, {"loss": 1.0})
    reporter.info("a"), reporter.warn("b"), reporter.table("t", ["c"], [[1]]), reporter.close()
    assert capsys.readouterr() == ("", "")


def test_every_reporter_meets_the_protocol() -> None:
    console = Console(file=io.StringIO())
    for reporter in (NullReporter(), PlainReporter(), RichReporter(console, console)):
        assert isinstance(reporter, Reporter)


def test_make_reporter_is_plain_in_ci_and_when_forced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    assert isinstance(make_reporter(), PlainReporter)
    monkeypatch.delenv("CI")
    assert isinstance(make_reporter(force_plain=True), PlainReporter)
    # Under pytest stderr is captured, not a terminal.
    assert isinstance(make_reporter(), PlainReporter)
    assert make_reporter(quiet=True).quiet
