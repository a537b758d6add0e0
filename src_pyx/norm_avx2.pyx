# cython: language_level=3
"""The kernels of norm.pyx compiled for x86-64 with AVX2 + FMA (selected at run time by cnn_ext._kernels)."""
include "norm.pyx"
