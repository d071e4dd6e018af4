"""Errors a user can cause, each carrying the exit code the CLI returns for it."""

from __future__ import annotations


class SclError(Exception):
    """Base class: the message is shown as one line, without a traceback."""

    exit_code = 1


class UsageError(SclError):
    """Bad command line, recipe or input file (exit code 2)."""

    exit_code = 2


class RecipeError(UsageError):
    """A recipe that does not validate; the message names the file, field, value and expectation."""


class DataError(SclError):
    """A data set on disk that is missing or malformed."""

    exit_code = 2


class CheckpointError(SclError):
    """A checkpoint that cannot be loaded (missing, incomplete, other architecture, unsafe format)."""

    exit_code = 2


class TrainingError(SclError):
    """A run that cannot go on (non-finite steps after every roll-back, too many undecodable
    samples); the message says why and what to try (exit code 1)."""


class ReproductionError(SclError):
    """`scl pretrain --reproduce`: the re-run's losses differ from the recorded run's (exit code 1)."""
