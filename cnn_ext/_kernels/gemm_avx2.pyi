"""Type stubs for cnn_ext._kernels.gemm_avx2: src_pyx/gemm.pyx compiled with AVX2 + FMA (x86-64 only)."""
from .gemm import *
