"""Type stubs for cnn_ext._kernels.norm_avx512: src_pyx/norm.pyx compiled with AVX-512 F/VL/BW/DQ (and AVX2 + FMA) (x86-64 only)."""
from .norm import *
