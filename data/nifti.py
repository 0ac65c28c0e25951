"""Array conventions shared by every NIfTI reader (the OASIS loader and ``register.py``)."""

import numpy as np

from utils.errors import DataError


def drop_trailing_singletons(array, dim):
    """Drop trailing length-1 axes beyond ``dim``: (H, W, 1) is a 2D slice, (D, H, W, 1) a volume."""
    while array.ndim > dim and array.shape[-1] == 1:
        array = array[..., 0]
    return array


def integral_labels(array, where):
    """Return a label array with integer values, rounding float-stored labels after checking them.

    Parameters
    ----------
    array : numpy.ndarray
        Integer, boolean, or float array whose values must all be integers (the 2D release stores
        its label maps as float64).
    where : str
        How to name the file in an error message.

    Raises
    ------
    DataError
        Non-integer or non-finite values, or a non-numeric data type.
    """
    if array.dtype.kind == "f":
        bad = ~np.isfinite(array) | (array != np.round(array))
        if bad.any():
            raise DataError(f"{where} holds non-integer label values (e.g. {array[bad].flat[0]}); "
                            f"a label map must hold integer labels, check the file")
        return np.round(array)
    if array.dtype.kind not in "iub":
        raise DataError(f"{where} has data type {array.dtype}; a label map must hold integer labels")
    return array
