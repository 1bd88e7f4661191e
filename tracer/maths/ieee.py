"""Spreadsheet-faithful handling of non-finite numbers.

A spreadsheet error (#NUM!) poisons every formula that reads it, even where IEEE
arithmetic would recover a finite number (max(-inf, 0) = 0, exp(-inf) = 0, 1/inf = 0).
The engine applies the same rule so that its non-finite values and the workbook's
error cells fall in exactly the same places.
"""
import numpy as np


def propagate_nonfinite(result, *inputs, axis=None):
    """Return `result` with NaN wherever any input is non-finite and the result is not.

    With `axis`, a non-finite input anywhere along that axis poisons the whole slice
    (a softmax row, a sum over samples).
    """
    result = np.asarray(result, dtype=float)
    if all(np.isfinite(value).all() for value in inputs):
        return result  # the common case: nothing to poison
    bad = np.zeros(result.shape, dtype=bool)
    for value in inputs:
        mask = ~np.isfinite(np.asarray(value, dtype=float))
        if axis is not None:
            mask = mask.any(axis=axis, keepdims=True)
        bad = bad | np.broadcast_to(mask, result.shape)
    if not bad.any():
        return result
    return np.where(bad & np.isfinite(result), np.nan, result)
