"""The errors sae_lens_attn raises for bad input, shared by the Python API and the CLI.

The message of each is one line in the form `<what>: <why, what is valid>`. They subclass
the built-in errors a Python caller expects (`ValueError`, `FileNotFoundError`), and the
command line prints them as `error: <message>` with exit code 2, without a traceback.
"""

from __future__ import annotations

from typing import Any


class InvalidInputError(ValueError):
    """An argument, file or piece of data the caller gave is not valid."""


class MissingInputError(InvalidInputError, FileNotFoundError):
    """A file or folder the caller named does not exist."""


class NonFiniteWeightsError(InvalidInputError):
    """An SAE's weights hold NaN or inf. `report` is the `WeightReport`
    (`sae_lens_attn.sources.weight_check`) naming the tensors, the value counts and the
    affected features; `features` the affected feature indices."""

    def __init__(self, message: str, report: Any) -> None:
        super().__init__(message)
        self.report = report
        self.features: tuple[int, ...] = report.nonfinite_features


class PlainRuntimeError(RuntimeError):
    """A failure at run time whose message says all there is to say: the command line
    prints it as it is (no traceback hint) and exits 1."""


class NoLiveFeaturesError(PlainRuntimeError):
    """Valid input that leaves no feature to analyse: every decoder row is zero or was
    skipped for NaN/inf, or no feature fires on the evaluation tokens. The command line
    prints the message as it is and exits 1."""
