"""Type stubs for cnn_ext._kernels.winograd_avx2: src_pyx/winograd.pyx compiled with AVX2 + FMA (x86-64 only)."""
from .winograd import *
