"""Type stubs for cnn_ext._kernels.pooling_avx2: src_pyx/pooling.pyx compiled with AVX2 + FMA (x86-64 only)."""
from .pooling import *
