"""Per-sequence intensity statistics, accumulated frame by frame (min, max, 1%/99% percentiles, mean, std).

For 8- and 16-bit integer frames a full histogram is kept, so the percentiles are exact and equal to
``np.percentile(all_frames, q)`` (linear interpolation) without holding the sequence in memory. Other
dtypes keep a deterministic strided subsample of at most 2^24 values for the percentiles (``exact`` is
then false); min, max, mean and std are always exact.
"""

from __future__ import annotations

import math

import numpy as np

_SAMPLE_CAP = 1 << 24


def _percentile_from_hist(counts: np.ndarray, offset: int, q: float) -> float:
    """numpy's linear percentile of the data whose histogram (values offset..) is ``counts``."""
    n = int(counts.sum())
    position = q / 100.0 * (n - 1)
    low = math.floor(position)
    frac = position - low
    cum = np.cumsum(counts)
    # The k-th smallest value (0-based) is the first bin whose cumulative count exceeds k.
    v_low = int(np.searchsorted(cum, low, side="right"))
    v_high = int(np.searchsorted(cum, min(low + 1, n - 1), side="right"))
    return float(v_low + offset + frac * (v_high - v_low))


class IntensityStats:
    """Accumulates raw frames of one sequence; :meth:`result` gives the JSON-able statistics."""

    def __init__(self, dtype: np.dtype) -> None:
        self.dtype = np.dtype(dtype)
        self._hist_mode = self.dtype.kind in "ui" and self.dtype.itemsize <= 2
        if self._hist_mode:
            info = np.iinfo(self.dtype)
            self._offset = int(info.min)
            self._hist = np.zeros(int(info.max) - int(info.min) + 1, dtype=np.int64)
        self._samples: list[np.ndarray] = []
        self._sampled = 0
        self._count = 0
        self._sum = 0.0
        self._sumsq = 0.0
        self._min = math.inf
        self._max = -math.inf

    def add(self, frame: np.ndarray) -> None:
        if frame.dtype != self.dtype:
            raise ValueError(f"frame dtype {frame.dtype} != {self.dtype}")
        flat = frame.reshape(-1)
        if flat.size == 0:
            return
        self._count += flat.size
        if self._hist_mode:
            values = flat.astype(np.intp) - self._offset if self._offset else flat
            self._hist += np.bincount(values, minlength=self._hist.size)
            return
        as_float = flat.astype(np.float64)
        self._sum += float(as_float.sum())
        self._sumsq += float(np.dot(as_float, as_float))
        self._min = min(self._min, float(as_float.min()))
        self._max = max(self._max, float(as_float.max()))
        step = max(1, flat.size * 64 // _SAMPLE_CAP)  # about cap/64 values per frame, spread evenly
        sample = flat[::step].copy()
        self._samples.append(sample)
        self._sampled += sample.size
        while self._sampled > _SAMPLE_CAP:  # halve every sample, keeping each evenly spread
            self._samples = [s[::2].copy() for s in self._samples]
            self._sampled = sum(s.size for s in self._samples)

    def result(self) -> dict:
        if self._count == 0:
            raise ValueError("no frames added")
        if self._hist_mode:
            values = np.arange(self._hist.size, dtype=np.float64) + self._offset
            mean = float(np.dot(self._hist, values) / self._count)
            var = float(np.dot(self._hist, (values - mean) ** 2) / self._count)
            present = np.flatnonzero(self._hist)
            return {
                "min": float(present[0] + self._offset), "max": float(present[-1] + self._offset),
                "p1": _percentile_from_hist(self._hist, self._offset, 1.0),
                "p99": _percentile_from_hist(self._hist, self._offset, 99.0),
                "mean": mean, "std": math.sqrt(max(var, 0.0)), "exact": True,
            }
        sample = np.concatenate(self._samples).astype(np.float64)
        mean = self._sum / self._count
        var = self._sumsq / self._count - mean * mean
        p1, p99 = np.percentile(sample, [1.0, 99.0])
        return {
            "min": self._min, "max": self._max, "p1": float(p1), "p99": float(p99),
            "mean": mean, "std": math.sqrt(max(var, 0.0)), "exact": False,
        }
