"""Feature arrays as the metrics take them: ``[N x D]``, numpy or torch, computed in float64."""

from __future__ import annotations

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor


def as_features(x: ArrayLike, name: str = "features") -> np.ndarray:
    """``[N x D]`` float64 numpy copy of a numpy array or torch tensor.

    Raises:
        ValueError: ``x`` is not two-dimensional, or holds NaN or inf.
    """
    a = x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name} must be [N x D], got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contain NaN or inf")
    return a
