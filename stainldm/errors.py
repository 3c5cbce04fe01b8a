"""Errors stainldm raises for things a user can fix or should know about.

Every message names the file, key or argument at fault, says what was wrong and what to do.
A message names a function parameter in backticks, as the library's signatures spell it
(``"`steps` (0) must be ..."``, ``"pass `mpp`"``); the CLI shows each such name as the flag that sets
it (:func:`with_flags`: ``--steps``, ``--mpp``), so one message serves a notebook and the command line.
The CLI prints ``error: <message>`` on one line and exits with ``exit_code``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_PARAM = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)`")


def one_line(text: object) -> str:
    """``text`` (an exception, say) on one line: runs of whitespace and newlines become one space."""
    return " ".join(str(text).split())


def with_flags(message: str, flags: Mapping[str, str]) -> str:
    """``message`` with each backticked parameter name that ``flags`` maps written as its flag.

    Args:
        message: an error message (``"`batch_size` must be positive"``).
        flags: parameter name -> command-line flag (``{"batch_size": "--batch-size"}``).

    Returns:
        ``"--batch-size must be positive"``; names ``flags`` lacks keep their backticks.
    """
    return _PARAM.sub(lambda m: flags.get(m.group(1), m.group(0)), message)


class StainLDMError(Exception):
    """Base class. ``exit_code`` is what the CLI returns: 2 for bad input, 1 for a failure."""

    exit_code = 1


class InputError(StainLDMError):
    """A path or argument the user gave is missing, unreadable or out of range."""

    exit_code = 2


class SlideFormatError(InputError):
    """A slide exists but no reader can open it (corrupt, truncated, wrong format)."""


class NoTissueError(InputError):
    """A slide shows no tissue to work on (glass only, or a blank scan): nothing to stain."""


class ConfigError(InputError):
    """A configuration file or ``--set`` override has an unknown key, a wrong type or a bad value."""


class CheckpointError(InputError):
    """A checkpoint is missing, corrupt, or belongs to another kind of model."""


class RunError(StainLDMError):
    """Something failed while running (not the user's input): disk full, NaN loss, ..."""

    exit_code = 1
