"""User-facing errors: one line that names the file/field, the bad value and the fix."""

from __future__ import annotations

import difflib
from typing import Iterable


class SynthprefError(Exception):
    """An error the user can fix; the CLI prints it as one line (no traceback unless --debug)."""


class ConfigError(SynthprefError):
    pass


class AssetError(SynthprefError):
    pass


class DataError(SynthprefError):
    pass


class BackendError(SynthprefError):
    pass


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """Return ' (did you mean 'x'?)' or a list of valid choices, for error messages."""
    choices = sorted(set(choices))
    close = difflib.get_close_matches(value, choices, n=1, cutoff=0.5)
    if close:
        return f" (did you mean '{close[0]}'?)"
    if len(choices) <= 12:
        return f" (valid: {', '.join(choices)})"
    return ""
