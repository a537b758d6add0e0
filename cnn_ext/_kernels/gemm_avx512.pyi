"""Type stubs for cnn_ext._kernels.gemm_avx512: src_pyx/gemm.pyx compiled with AVX-512 F/VL/BW/DQ (and AVX2 + FMA) (x86-64 only)."""
from .gemm import *
