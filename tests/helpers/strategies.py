"""Hypothesis strategies shared by the test modules: layer shapes, dtypes, strides and paddings.

Sizes stay small (every example runs the float64 oracles in Python): use them with
``@settings(max_examples=..., deadline=None)``.
"""
import numpy as np
from hypothesis import strategies as st

# Fixed cases: (N, C_in, C_out, H, W, KH, KW), stride, the padding argument, its (top, bottom, left, right).
CONV_CONFIGS = [
    ((2, 3, 4, 9, 8, 3, 3), (2, 2), 0, (0, 0, 0, 0)),
    ((2, 3, 4, 9, 8, 3, 2), (1, 1), 1, (1, 1, 1, 1)),
    ((2, 2, 3, 7, 10, 3, 3), (2, 3), (1, 2), (1, 1, 2, 2)),
    ((1, 2, 2, 6, 6, 4, 4), (1, 1), "same", (1, 2, 1, 2)),
    ((3, 1, 2, 5, 7, 3, 5), (1, 1), "same", (1, 1, 2, 2)),
    ((2, 2, 2, 8, 8, 2, 2), (3, 2), ((0, 1), (2, 0)), (0, 1, 2, 0)),
    ((2, 16, 8, 7, 7, 3, 3), (2, 2), 1, (1, 1, 1, 1)),
]

dtypes = st.sampled_from([np.float64, np.float32])
strides = st.tuples(st.integers(1, 3), st.integers(1, 3))


def paddings(KH=None, KW=None, most=2):
    """(top, bottom, left, right), each in [0, most] (or [0, K - 1] per side when KH, KW are given)."""
    if KH is None:
        return st.tuples(*(st.integers(0, most) for _ in range(4)))
    return st.tuples(st.integers(0, KH - 1), st.integers(0, KH - 1), st.integers(0, KW - 1), st.integers(0, KW - 1))


def nested(pad):
    """(top, bottom, left, right) as the conv functions' ((top, bottom), (left, right)) argument."""
    return ((pad[0], pad[1]), (pad[2], pad[3]))


@st.composite
def conv_cases(draw, max_batch=4, max_channels=5, max_kernel=4, max_extra=6, stride=True, padding=True):
    """(N, C_in, C_out, H, W, KH, KW), stride, (top, bottom, left, right), dtype."""
    N = draw(st.integers(1, max_batch))
    C_in, C_out = draw(st.integers(1, max_channels)), draw(st.integers(1, max_channels))
    KH, KW = draw(st.integers(1, max_kernel)), draw(st.integers(1, max_kernel))
    H, W = draw(st.integers(KH, KH + max_extra)), draw(st.integers(KW, KW + max_extra))
    s = draw(strides) if stride else (1, 1)
    pad = draw(paddings()) if padding else (0, 0, 0, 0)
    return (N, C_in, C_out, H, W, KH, KW), s, pad, draw(dtypes)


@st.composite
def one_channel_cases(draw):
    """One-input-channel layers (N, C_in=1, C_out, H, W, KH, KW) and padding up to K - 1 per side: sizes around
    the vector tiles' widths."""
    KH, KW = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    H, W = draw(st.integers(KH, 34)), draw(st.integers(KW, 34))
    pad = draw(paddings(KH, KW))
    return (draw(st.integers(1, 5)), 1, draw(st.integers(1, 9)), H, W, KH, KW), pad


@st.composite
def pool_cases(draw, min_batch=0):
    """(N, C, H, W), kernel (KH, KW) <= (H, W), stride (SH, SW), seed."""
    N, C = draw(st.integers(min_batch, 3)), draw(st.integers(1, 3))
    H, W = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    KH, KW = draw(st.integers(1, H)), draw(st.integers(1, W))
    SH, SW = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    return (N, C, H, W), (KH, KW), (SH, SW), draw(st.integers(0, 2**16))
