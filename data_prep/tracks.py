"""The CTC track table ``man_track.txt`` (``L B E P`` per line): parse it and check it against TRA masks.

Rules (CTC): labels unique and positive, ``0 <= B <= E``, a parent exists and ends before its child
begins, and label L appears in every TRA mask frame from B to E and in no other frame. TRA masks may cover
only a range of frames (PhC-C2DL-PSC annotates t150-t250), so only frames that have a mask are checked.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from celltune.data_prep.common import UserInputError


def parse_man_track(text: str, rel: str, num_frames: int | None = None) -> np.ndarray:
    """Parse and check the table; returns an int64 array ``(N, 4)`` with columns L, B, E, P.

    Args:
        text: the file's content.
        rel: the file's path, for messages.
        num_frames: frames in the sequence; with it, a track ending at frame ``num_frames`` or later is refused.

    Raises:
        UserInputError: a malformed line or a row breaking the rules above (names the line).
    """
    rows: list[tuple[int, int, int, int]] = []
    line_of: dict[int, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            values = tuple(int(p) for p in parts)
        except ValueError:
            values = ()
        if len(values) != 4:
            raise UserInputError(f"{rel}: line {number} {line.strip()!r}: expected four integers 'L B E P'")
        label, begin, end, parent = values
        if any(abs(v) >= 1 << 63 for v in values):  # would not fit the int64 table
            raise UserInputError(f"{rel}: line {number} {line.strip()!r}: number too large")
        if label <= 0 or begin < 0 or parent < 0:
            raise UserInputError(f"{rel}: line {number} {line.strip()!r}: L must be > 0, B and P >= 0")
        if begin > end:
            raise UserInputError(f"{rel}: line {number}: track {label} begins (B={begin}) after it ends (E={end})")
        if num_frames is not None and end >= num_frames:
            raise UserInputError(f"{rel}: line {number}: track {label} ends at frame {end}, past the last frame "
                                 f"{num_frames - 1}")
        if label in line_of:
            raise UserInputError(f"{rel}: line {number}: track {label} already defined on line {line_of[label]}")
        line_of[label] = number
        rows.append(values)
    table = np.array(rows, dtype=np.int64).reshape(-1, 4)
    by_label = {int(r[0]): r for r in table}
    for label, begin, _end, parent in table:
        if parent == 0:
            continue
        if parent == label:
            raise UserInputError(f"{rel}: line {line_of[int(label)]}: track {label} names itself as its parent")
        if parent not in by_label:
            raise UserInputError(f"{rel}: line {line_of[int(label)]}: parent {parent} of track {label} is not a track")
        if by_label[int(parent)][2] >= begin:
            raise UserInputError(f"{rel}: line {line_of[int(label)]}: parent {parent} ends at frame "
                                 f"{by_label[int(parent)][2]}, not before track {label} begins at {begin}")
    return table


def check_against_masks(table: np.ndarray, present: Mapping[int, np.ndarray], rel: str,
                        mask_names: Mapping[int, str]) -> None:
    """Check that every TRA mask frame holds exactly the tracks the table says are alive there.

    Args:
        table: ``(N, 4)`` from :func:`parse_man_track`.
        present: frame t -> sorted array of the positive labels in ``man_track<t>.tif``.
        rel: the table's path, for messages.
        mask_names: frame t -> the mask's file name, for messages.

    Raises:
        UserInputError: the first contradiction, naming the track, the frame and the mask file.
    """
    if not present:
        return
    frames = sorted(present)
    alive_sets = {t: set() for t in frames}
    for label, begin, end, _parent in table:
        lo, hi = np.searchsorted(frames, [begin, end + 1])
        for t in frames[lo:hi]:
            alive_sets[t].add(int(label))
    known = {int(label) for label in table[:, 0]}
    for t in frames:
        ids = {int(i) for i in present[t]}
        alive = alive_sets[t]
        unknown = sorted(ids - known)
        if unknown:
            raise UserInputError(f"{rel}: label {unknown[0]} of {mask_names[t]} is not in the table")
        outside = sorted(ids - alive)
        if outside:
            row = table[table[:, 0] == outside[0]][0]
            raise UserInputError(f"{rel}: track {outside[0]} (frames {row[1]}-{row[2]}) appears in "
                                 f"{mask_names[t]}, outside its frames")
        missing = sorted(alive - ids)
        if missing:
            row = table[table[:, 0] == missing[0]][0]
            raise UserInputError(f"{rel}: track {missing[0]} (frames {row[1]}-{row[2]}) is missing from "
                                 f"{mask_names[t]}")
