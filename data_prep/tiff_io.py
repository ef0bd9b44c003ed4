"""Read one CTC TIFF: bytes read once, checksummed, decoded, and checked; failures become one-line errors.

Decoding goes through libtiff (``imagecodecs.tiff_decode``), 2-4x faster than tifffile on the LZW
files of the CTC; multi-page files are cross-checked against tifffile's reading of the header (libtiff
stacks every page of matching shape, tifffile understands ImageJ and OME layouts), and tifffile also
reads what libtiff cannot and produces the error message when neither can.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from celltune.data_prep.common import UserInputError, one_line

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FileRecord:
    """Provenance of one source file: path relative to its dataset folder, size and sha256."""

    path: str
    size: int
    sha256: str

    def to_json(self) -> dict:
        return {"path": self.path, "size": self.size, "sha256": self.sha256}


def read_bytes(path: Path, rel: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UserInputError(f"{rel}: cannot read file ({exc.strerror or exc})") from None


def checksum(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def _quiet_tifffile() -> Iterator[None]:
    """tifffile logs warnings for damaged files that we turn into our own one-line error."""
    log = logging.getLogger("tifffile")
    level = log.level
    log.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        log.setLevel(level)


def _decode_tifffile(data: bytes, rel: str) -> np.ndarray:
    import tifffile

    with _quiet_tifffile():
        try:
            with tifffile.TiffFile(io.BytesIO(data)) as tif:
                if not tif.pages or not tif.series:
                    raise UserInputError(f"{rel}: truncated or empty TIFF (no readable image)")
                series = tif.series[0]
                for page in tif.pages:
                    offsets = getattr(page, "dataoffsets", ())
                    counts = getattr(page, "databytecounts", ())
                    if any(o + c > len(data) for o, c in zip(offsets, counts, strict=False)):
                        raise UserInputError(f"{rel}: truncated TIFF (image data runs past the end of the "
                                             f"{len(data)}-byte file)")
                if "S" in series.axes or "C" in series.axes:
                    raise UserInputError(f"{rel}: multi-channel image (axes {series.axes}); expected one channel")
                return series.asarray(maxworkers=1)
        except UserInputError:
            raise
        except Exception as exc:  # tifffile raises many types for damaged files
            reason = one_line(exc, 1000)
            raise UserInputError(f"{rel}: unreadable TIFF ({reason})") from None


def _tifffile_header(data: bytes) -> tuple[tuple[int, ...], str] | None:
    """Shape and axes of the first series as tifffile reads them, or None."""
    import tifffile

    with _quiet_tifffile():
        try:
            with tifffile.TiffFile(io.BytesIO(data)) as tif:
                return (tuple(tif.series[0].shape), tif.series[0].axes) if tif.series else None
        except Exception:
            return None


def decode_tiff(data: bytes, rel: str) -> np.ndarray:
    """Decode TIFF bytes to a ``(Y, X)`` or ``(Z, Y, X)`` array (squeezing length-1 axes beyond 2D).

    Raises:
        UserInputError: the file is not a TIFF, is truncated or damaged, or holds a multi-channel image.
    """
    import imagecodecs

    array = None
    try:
        array = imagecodecs.tiff_decode(data, index=None)
    except Exception:  # libtiff cannot read it: tifffile reads it or says precisely what is wrong
        array = None
    if array is not None and array.ndim == 3:
        # Several pages (a z-stack) or samples (RGB): confirm with tifffile's view of the file.
        header = _tifffile_header(data)
        if header is None or header[0] != array.shape or "S" in header[1] or "C" in header[1]:
            array = None
    if array is None or array.ndim not in (2, 3):
        array = _decode_tifffile(data, rel)
    if array.ndim > 2:
        array = array.reshape(tuple(n for n in array.shape[:-2] if n != 1) + array.shape[-2:])
    if array.ndim not in (2, 3) or array.size == 0:
        raise UserInputError(f"{rel}: image shape {array.shape}; expected a 2D frame or a 3D (Z, Y, X) stack")
    return array


def read_tiff(path: Path, rel: str, rel_in_dataset: str) -> tuple[np.ndarray, FileRecord]:
    """Read ``path`` once: return its image and its provenance record (size, sha256 of the bytes read)."""
    data = read_bytes(path, rel)
    record = FileRecord(rel_in_dataset, len(data), checksum(data))
    return decode_tiff(data, rel), record


def check_labels(labels: np.ndarray, rel: str) -> np.ndarray:
    """Validate a label image: integer dtype, no negative ids. Returns it unchanged.

    Raises:
        UserInputError: float, complex or bool labels, or negative values.
    """
    kind = labels.dtype.kind
    if kind not in "iu":
        raise UserInputError(f"{rel}: label image has {labels.dtype} dtype; expected integer ids (uint8/16/32)")
    if kind == "i" and labels.size:
        low = int(labels.min())
        if low < 0:
            raise UserInputError(f"{rel}: label image has negative values (min {low}); ids must be >= 0")
    if labels.dtype.itemsize > 4 and labels.size:  # stored as uint32 at most: larger ids would wrap and merge cells
        high = int(labels.max())
        if high > np.iinfo(np.uint32).max:
            raise UserInputError(f"{rel}: label id {high} does not fit 32 bits (ids up to {np.iinfo(np.uint32).max}); "
                                 "renumber the labels")
    return labels
