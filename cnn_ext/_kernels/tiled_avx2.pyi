"""Type stubs for cnn_ext._kernels.tiled_avx2: src_pyx/tiled.pyx compiled with AVX2 + FMA (x86-64 only)."""
from .tiled import *
