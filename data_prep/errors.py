"""The one exception type for problems a user can fix (bad input, bad value, bad path).

The CLI prints these as a single line and exits with code 2; everything else is a failure (exit 1).
It subclasses ValueError so library callers can catch it the usual way.
"""


class UserInputError(ValueError):
    """Bad input named by its file or value, e.g. ``"01/t003.tif: truncated TIFF"``."""
