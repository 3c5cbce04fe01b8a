"""Errors stainldm raises for things a user can fix or should know about.

Every message names the file, key or argument at fault, says what was wrong and what to do.
The CLI prints ``error: <message>`` on one line and exits with ``exit_code``.
"""

from __future__ import annotations


def one_line(text: object) -> str:
    """``text`` (an exception, say) on one line: runs of whitespace and newlines become one space."""
    return " ".join(str(text).split())


class StainLDMError(Exception):
    """Base class. ``exit_code`` is what the CLI returns: 2 for bad input, 1 for a failure."""

    exit_code = 1


class InputError(StainLDMError):
    """A path or argument the user gave is missing, unreadable or out of range."""

    exit_code = 2


class SlideFormatError(InputError):
    """A slide exists but no reader can open it (corrupt, truncated, wrong format)."""


class ConfigError(InputError):
    """A configuration file or ``--set`` override has an unknown key, a wrong type or a bad value."""


class CheckpointError(InputError):
    """A checkpoint is missing, corrupt, or belongs to another kind of model."""


class RunError(StainLDMError):
    """Something failed while running (not the user's input): disk full, NaN loss, ..."""

    exit_code = 1
