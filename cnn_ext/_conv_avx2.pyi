"""Type stubs for cnn_ext._conv_avx2: src_pyx/_conv.pyx compiled with AVX2 + FMA (x86-64 only), same API."""
from ._conv import (
    SUM_LANES as SUM_LANES,
    channel_tile as channel_tile,
    conv2d_bias_gradient as conv2d_bias_gradient,
    conv2d_forward as conv2d_forward,
    conv2d_forward_cv as conv2d_forward_cv,
    conv2d_forward_wide as conv2d_forward_wide,
    conv2d_input_gradient as conv2d_input_gradient,
    conv2d_kernel_gradient as conv2d_kernel_gradient,
    conv2d_kernel_gradient_wide as conv2d_kernel_gradient_wide,
    direct_tile_lanes as direct_tile_lanes,
    kgrad_wide_scratch_size as kgrad_wide_scratch_size,
    matmul as matmul,
    openmp_enabled as openmp_enabled,
    openmp_max_threads as openmp_max_threads,
    wide_tile as wide_tile,
)
