"""Pictures the platform hands to users appear whole or not at all (the byte-level writer is
:func:`celltune.data_prep.common.write_atomic`)."""

from __future__ import annotations

import io
from pathlib import Path

from celltune.data_prep.common import write_atomic


def save_figure_atomic(figure, path: Path) -> Path:
    """Save a matplotlib figure as PNG ``path`` atomically, and close it."""
    from celltune.platform.plots import close_figure

    try:
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
    finally:
        close_figure(figure)
    return write_atomic(path, buffer.getvalue())
