"""Type stubs for cnn_ext._kernels.depthwise_avx2: src_pyx/depthwise.pyx compiled with AVX2 + FMA (x86-64 only)."""
from .depthwise import *
