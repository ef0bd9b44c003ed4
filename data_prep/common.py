"""What every layer shares, kept in the bottom layer so that every layer can use it: the one exception type for
problems a user can fix, the "did you mean" hint, one-line messages from library exceptions, and files that appear
whole or not at all. (The Ray session, the other shared piece, is :mod:`celltune.data_prep.ray_session`.)

The CLI prints a ``UserInputError`` as a single line and exits with code 2; everything else is a failure (exit 1).
"""

from __future__ import annotations

import contextlib
import difflib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path


class UserInputError(ValueError):
    """Bad input named by its file or value, e.g. ``"01/t003.tif: truncated TIFF"``; a ValueError, so library
    callers can catch it the usual way."""


def did_you_mean(value: object, choices: Iterable[str], *, n: int = 1, cutoff: float = 0.6) -> str:
    """``"did you mean 'x'?"`` (``'x' or 'y'`` with ``n`` > 1) for the closest of ``choices``, or ``""``: the
    hint every "unknown name" message carries, worded once."""
    close = difflib.get_close_matches(str(value), list(choices), n=n, cutoff=cutoff)
    return f"did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's message on one line (whitespace collapsed, at most ``limit`` characters), or its type name:
    what a one-line error shows of a library's multi-line message."""
    text = " ".join(str(exc).split())[:limit]
    return text or type(exc).__name__


def default_permissions(path: Path) -> Path:
    """Give a file or folder made by ``tempfile`` (0600/0700) the permissions a plain write would have had
    under the user's umask, so results written atomically are as shareable as any other file."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, (0o777 if Path(path).is_dir() else 0o666) & ~mask)
    return Path(path)


def write_atomic(path: Path, content: str | bytes) -> Path:
    """Write ``content`` (text as UTF-8) to ``path`` through a temporary file in the same folder, so an
    interrupted write never leaves half a file under the final name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content.encode("utf-8") if isinstance(content, str) else content)
        default_permissions(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def missing_folders(path: Path) -> list[Path]:
    """``path`` and those of its parents that do not exist yet, deepest first: what a failed command that makes
    them must remove again, so a refusal leaves no trace."""
    return [p for p in (path, *path.parents) if not p.exists()]


def remove_empty_folders(folders: Iterable[Path]) -> None:
    """Remove those of ``folders`` (deepest first) that exist and are empty."""
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()
