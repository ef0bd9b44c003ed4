"""The one exception type for problems a user can fix (bad input, bad value, bad path).

The CLI prints these as a single line and exits with code 2; everything else is a failure (exit 1).
It subclasses ValueError so library callers can catch it the usual way.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserInputError(ValueError):
    """Bad input named by its file or value, e.g. ``"01/t003.tif: truncated TIFF"``."""


def did_you_mean(value: object, choices: Iterable[str], *, n: int = 1, cutoff: float = 0.6) -> str:
    """``"did you mean 'x'?"`` (``'x' or 'y'`` with ``n`` > 1) for the closest of ``choices``, or ``""``: the
    hint every "unknown name" message carries, worded once."""
    close = difflib.get_close_matches(str(value), list(choices), n=n, cutoff=cutoff)
    return f"did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
