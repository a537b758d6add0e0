"""Type stubs for cnn_ext._kernels.kgrad_avx2: src_pyx/kgrad.pyx compiled with AVX2 + FMA (x86-64 only)."""
from .kgrad import *
