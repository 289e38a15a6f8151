"""Input coercion shared by the selection and scoring kernels."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["to_tensor"]


def to_tensor(x: Any) -> torch.Tensor:
    """Return ``x`` as a tensor, without copying where that is possible.

    A tensor is returned as it is (same dtype, device and autograd history); anything
    else (numpy array, nested list, scalar) goes through ``np.asarray`` then
    ``torch.as_tensor``, which shares a numpy array's memory and keeps its dtype, on the
    CPU.  Callers cast dtype and device themselves: the kernels differ on both.
    """
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
