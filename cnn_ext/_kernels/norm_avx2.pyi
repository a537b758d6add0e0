"""Type stubs for cnn_ext._kernels.norm_avx2: src_pyx/norm.pyx compiled with AVX2 + FMA (x86-64 only)."""
from .norm import *
