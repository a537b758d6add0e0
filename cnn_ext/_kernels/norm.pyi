"""Type stubs for the compiled kernel module cnn_ext._kernels.norm (src_pyx/norm.pyx).

Private: call the layers in cnn_ext.layers.norm. x, dy, y, dx and gamma / beta of one call share one dtype,
float32 or float64, and are C-contiguous; the statistics are float64; outputs (OUT) are allocated by the caller.
Work is split over channels, so results do not depend on num_threads.
"""
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

_F = TypeVar("_F", np.float32, np.float64)

def batchnorm_forward(
    x: NDArray[_F],  # IN  (N, C, L)
    gamma: NDArray[_F],  # IN  (C,)
    beta: NDArray[_F],  # IN  (C,)
    y: NDArray[_F],  # OUT (N, C, L)
    mean: NDArray[np.float64],  # OUT (C,) batch mean when batch_stats, else IN
    var: NDArray[np.float64],  # OUT (C,) biased batch variance when batch_stats
    invstd: NDArray[np.float64],  # OUT (C,) 1 / sqrt(var + eps) when batch_stats, else IN
    eps: float,
    batch_stats: bool,
    relu: bool,
    num_threads: int,
) -> None:
    """y = (x - mean) * invstd * gamma + beta per channel, then max(y, 0) with relu; with batch_stats the
    statistics come from x."""

def batchnorm_backward(
    dy: NDArray[_F],  # IN  (N, C, L)
    x: NDArray[_F],  # IN  (N, C, L)
    gamma: NDArray[_F],  # IN  (C,)
    mean: NDArray[np.float64],  # IN  (C,)
    invstd: NDArray[np.float64],  # IN  (C,)
    dx: NDArray[_F],  # OUT (N, C, L)
    dgamma: NDArray[np.float64],  # OUT (C,) sum of dy * xhat
    dbeta: NDArray[np.float64],  # OUT (C,) sum of dy
    batch_stats: bool,
    num_threads: int,
    z: NDArray[_F] | None = None,  # IN  (N, C, L) the output of a fused ReLU: dy is its gradient
) -> None:
    """Gradients of batch normalisation (of ReLU then batch normalisation with z); batch_stats: the forward pass used the batch's own statistics."""
