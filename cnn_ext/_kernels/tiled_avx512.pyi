"""Type stubs for cnn_ext._kernels.tiled_avx512: src_pyx/tiled.pyx compiled with AVX-512 F/VL/BW/DQ (and AVX2 + FMA) (x86-64 only)."""
from .tiled import *
