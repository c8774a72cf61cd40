"""The errors sae_lens_attn raises for bad input, shared by the Python API and the CLI.

The message of each is one line in the form `<what>: <why, what is valid>`. They subclass
the built-in errors a Python caller expects (`ValueError`, `FileNotFoundError`), and the
command line prints them as `error: <message>` with exit code 2, without a traceback.
"""

from __future__ import annotations


class InvalidInputError(ValueError):
    """An argument, file or piece of data the caller gave is not valid."""


class MissingInputError(InvalidInputError, FileNotFoundError):
    """A file or folder the caller named does not exist."""
