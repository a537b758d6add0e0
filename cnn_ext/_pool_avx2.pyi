"""Type stubs for cnn_ext._pool_avx2: src_pyx/_pool.pyx compiled with AVX2 + FMA (x86-64 only), same API."""
from ._pool import pool2d_backward as pool2d_backward, pool2d_forward as pool2d_forward
