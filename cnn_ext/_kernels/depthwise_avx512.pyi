"""Type stubs for cnn_ext._kernels.depthwise_avx512: src_pyx/depthwise.pyx compiled with AVX-512 F/VL/BW/DQ (and AVX2 + FMA) (x86-64 only)."""
from .depthwise import *
