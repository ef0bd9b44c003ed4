"""Files the platform hands to users (tables, pictures) appear whole or not at all: written beside their final
name and renamed into place, so an interrupted run never leaves half a CSV or PNG behind."""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path


def default_permissions(path: Path) -> Path:
    """Give a file or folder made by ``tempfile`` (0600/0700) the permissions a plain write would have had
    under the user's umask, so results written atomically are as shareable as any other file."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, (0o777 if Path(path).is_dir() else 0o666) & ~mask)
    return Path(path)


def write_atomic(path: Path, content: str | bytes) -> Path:
    """Write ``content`` (text as UTF-8) to ``path`` through a temporary file in the same folder."""
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


def save_figure_atomic(figure, path: Path) -> Path:
    """Save a matplotlib figure as PNG ``path`` atomically, and close it."""
    from celltune.platform.plots import close_figure

    try:
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
    finally:
        close_figure(figure)
    return write_atomic(path, buffer.getvalue())
