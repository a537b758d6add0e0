"""Type stubs for cnn_ext._kernels.rows_avx2: src_pyx/rows.pyx compiled with AVX2 + FMA (x86-64 only)."""
from .rows import *
