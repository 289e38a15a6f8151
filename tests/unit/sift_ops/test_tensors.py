"""sift_ops.tensors.to_tensor: the one input coercion of the kernels."""

from __future__ import annotations

import numpy as np
import torch

from sift_ops.tensors import to_tensor


def test_tensor_is_returned_as_is() -> None:
    x = torch.ones(3, dtype=torch.float16)
    assert to_tensor(x) is x


def test_numpy_shares_memory_and_keeps_dtype() -> None:
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    t = to_tensor(a)
    assert t.dtype == torch.float32 and tuple(t.shape) == (2, 3)
    a[0, 0] = 42.0
    assert t[0, 0].item() == 42.0


def test_nested_list_becomes_a_tensor() -> None:
    t = to_tensor([[1, 2], [3, 4]])
    assert t.dtype == torch.int64 and t.tolist() == [[1, 2], [3, 4]]
