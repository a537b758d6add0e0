# cython: language_level=3
"""Fused element-wise activations, input gradients and Adam's update over flat C-contiguous arrays (one pass, no
temporaries).

cnn_ext/layers/activations.py and cnn_ext/optim.py pick this path (C-contiguous, aligned arrays of one float dtype,
large enough to pay) and allocate the outputs; each `def` here takes 1-D memoryviews, releases the GIL and never
raises. The n elements are cut into num_threads contiguous chunks whose bounds are multiples of 64 elements (no
cache line written by two threads); every element gets the same expression whatever its chunk, so results do not
depend on the thread count. Each expression repeats, operation for operation and in the array's own precision, the
NumPy formula it replaces, so results are bitwise NumPy's (NaN propagation and signed zeros included). That relies
on no FMA contraction: build this module for the baseline ISA only (x86-64 has no FMA there), never with -mfma or
-ffast-math.
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport sqrt, sqrtf

cdef enum Op:
    RELU            # y = max(x, 0)                           (np.maximum(x, 0))
    RELU_GRAD       # dx = dy * [x > 0]                       (dy * (x > 0))
    LEAKY           # y = x if x > 0 else alpha * x           (np.where(x > 0, x, x * alpha))
    LEAKY_GRAD      # dx = dy if x > 0 else alpha * dy        (np.where(x > 0, dy, dy * alpha))
    SIGMOID_GRAD    # dx = ((1 - y) * y) * dy                 (dx = 1 - y; dx *= y; dx *= dy)
    TANH_GRAD       # dx = (1 - y * y) * dy                   (dx = y * y; 1 - dx; dx *= dy)
    ADD             # y = a + b                               (np.add(a, b))
    ADD_RELU        # y = max(a + b, 0)                       (np.maximum(np.add(a, b), 0))

cdef extern from "cnn_select.h":
    void cnn_ext_select_f(float* out, bint c, float a, float b) noexcept nogil
    void cnn_ext_select_d(double* out, bint c, double a, double b) noexcept nogil


cdef inline void _select(floating* out, bint c, floating a, floating b) noexcept nogil:
    """*out = a if c else b, branch-free (both already computed)."""
    if floating is float:
        cnn_ext_select_f(out, c, a, b)
    else:
        cnn_ext_select_d(out, c, a, b)


cdef enum:
    _ALIGN = 64  # elements: chunk bounds on whole cache lines of either dtype


cdef void _apply(Op op, const floating* a, const floating* dy, floating* out, Py_ssize_t n,
                 floating alpha) noexcept nogil:
    """out[i] = op(a[i], dy[i]) for i < n; a is x (or y for the sigmoid / tanh gradients, the first term of a
    sum), dy the gradient (or the second term)."""
    cdef Py_ssize_t i
    cdef floating zero = 0, one = 1  # typed constants: a C double literal would lift float32 math to double
    cdef floating v
    if op == RELU:
        for i in range(n):
            # NaN <= 0 is false: a NaN passes through as np.maximum's; -0.0 gives +0.0 as there
            out[i] = zero if a[i] <= zero else a[i]
    elif op == RELU_GRAD:
        for i in range(n):
            out[i] = dy[i] * (one if a[i] > zero else zero)
    elif op == LEAKY:
        for i in range(n):
            _select(&out[i], a[i] > zero, a[i], a[i] * alpha)
    elif op == LEAKY_GRAD:
        for i in range(n):
            _select(&out[i], a[i] > zero, dy[i], dy[i] * alpha)
    elif op == SIGMOID_GRAD:
        for i in range(n):
            out[i] = ((one - a[i]) * a[i]) * dy[i]
    elif op == TANH_GRAD:
        for i in range(n):
            out[i] = (one - a[i] * a[i]) * dy[i]
    elif op == ADD:
        for i in range(n):
            out[i] = a[i] + dy[i]
    elif op == ADD_RELU:
        for i in range(n):
            v = a[i] + dy[i]
            out[i] = zero if v <= zero else v


cdef inline Py_ssize_t _bound(Py_ssize_t n, Py_ssize_t t, Py_ssize_t parts) noexcept nogil:
    """Start of chunk t of `parts` over n elements (n for t == parts), on a multiple of _ALIGN."""
    if t >= parts:
        return n
    return (n // _ALIGN * t // parts) * _ALIGN


cdef void _part(Op op, const floating* a, const floating* dy, floating* out, Py_ssize_t n, Py_ssize_t t,
                Py_ssize_t parts, floating alpha) noexcept nogil:
    cdef Py_ssize_t lo = _bound(n, t, parts), hi = _bound(n, t + 1, parts)
    _apply(op, a + lo, dy + lo, out + lo, hi - lo, alpha)


cdef void _run(Op op, const floating* a, const floating* dy, floating* out, Py_ssize_t n, floating alpha,
               int num_threads) noexcept nogil:
    cdef Py_ssize_t t
    if num_threads <= 1:  # no parallel region (entering one costs about a microsecond)
        _apply(op, a, dy, out, n, alpha)
        return
    for t in prange(num_threads, schedule='static', num_threads=num_threads):
        _part(op, a, dy, out, n, t, num_threads, alpha)


cdef void _adam(floating* p, const floating* g, floating* m, floating* v, Py_ssize_t n, floating b1,
                floating c1, floating b2, floating c2, floating scale, floating eps, floating step) noexcept nogil:
    """Adam's update of n elements, each operation rounded as NumPy's in-place sequence in Adam._update rounds it."""
    cdef Py_ssize_t i
    cdef floating d, mi, vi, q
    for i in range(n):
        d = g[i]
        mi = m[i] * b1 + d * c1                  # m *= b1; buf = d * c1; m += buf
        vi = v[i] * b2 + (d * d) * c2            # v *= b2; buf = d * d; buf *= c2; v += buf
        m[i] = mi
        v[i] = vi
        if floating is float:                    # sqrtf: sqrt of a double rounded back would stop vectorisation
            q = sqrtf(vi)
        else:
            q = sqrt(vi)
        q = mi / (q * scale + eps)               # buf = sqrt(v); buf *= scale; buf += eps; buf = m / buf
        p[i] = p[i] - step * q                   # buf *= step; p -= buf


cdef void _adam_part(floating* p, const floating* g, floating* m, floating* v, Py_ssize_t n, Py_ssize_t t,
                     Py_ssize_t parts, floating b1, floating c1, floating b2, floating c2, floating scale,
                     floating eps, floating step) noexcept nogil:
    cdef Py_ssize_t lo = _bound(n, t, parts), hi = _bound(n, t + 1, parts)
    _adam(p + lo, g + lo, m + lo, v + lo, hi - lo, b1, c1, b2, c2, scale, eps, step)


# ---------------------------------------------------------------------------------------------------
# Public typed entry points (called by cnn_ext.layers and cnn_ext.optim only); every array has the same
# length and dtype
# ---------------------------------------------------------------------------------------------------

def relu_forward(const floating[::1] x,   # IN  (n,)
                 floating[::1] y,         # OUT (n,)
                 int num_threads):
    """y = max(x, 0): +0.0 for x <= 0 (-0.0 included), NaN stays NaN."""
    if x.shape[0] > 0:
        with nogil:
            _run(RELU, &x[0], &x[0], &y[0], x.shape[0], 0, num_threads)


def relu_backward(const floating[::1] x,    # IN  (n,) forward input
                  const floating[::1] dy,   # IN  (n,)
                  floating[::1] dx,         # OUT (n,)
                  int num_threads):
    """dx = dy * [x > 0] (a product, as NumPy's: dy * 0 is -0.0 for dy < 0 and NaN for dy = ±inf or NaN)."""
    if x.shape[0] > 0:
        with nogil:
            _run(RELU_GRAD, &x[0], &dy[0], &dx[0], x.shape[0], 0, num_threads)


def leaky_relu_forward(const floating[::1] x,   # IN  (n,)
                       floating[::1] y,         # OUT (n,)
                       double alpha, int num_threads):
    """y = x where x > 0, else x * alpha (alpha rounded to the arrays' dtype first)."""
    if x.shape[0] > 0:
        with nogil:
            _run(LEAKY, &x[0], &x[0], &y[0], x.shape[0], <floating>alpha, num_threads)


def leaky_relu_backward(const floating[::1] x,    # IN  (n,) forward input
                        const floating[::1] dy,   # IN  (n,)
                        floating[::1] dx,         # OUT (n,)
                        double alpha, int num_threads):
    """dx = dy where x > 0, else dy * alpha."""
    if x.shape[0] > 0:
        with nogil:
            _run(LEAKY_GRAD, &x[0], &dy[0], &dx[0], x.shape[0], <floating>alpha, num_threads)


def sigmoid_backward(const floating[::1] y,    # IN  (n,) forward output
                     const floating[::1] dy,   # IN  (n,)
                     floating[::1] dx,         # OUT (n,)
                     int num_threads):
    """dx = ((1 - y) * y) * dy, rounded after each operation."""
    if y.shape[0] > 0:
        with nogil:
            _run(SIGMOID_GRAD, &y[0], &dy[0], &dx[0], y.shape[0], 0, num_threads)


def tanh_backward(const floating[::1] y,    # IN  (n,) forward output
                  const floating[::1] dy,   # IN  (n,)
                  floating[::1] dx,         # OUT (n,)
                  int num_threads):
    """dx = (1 - y * y) * dy, rounded after each operation."""
    if y.shape[0] > 0:
        with nogil:
            _run(TANH_GRAD, &y[0], &dy[0], &dx[0], y.shape[0], 0, num_threads)


def add(const floating[::1] a,   # IN  (n,)
        const floating[::1] b,   # IN  (n,)
        floating[::1] out,       # OUT (n,)
        int num_threads):
    """out = a + b (a residual block's sum, or its two input gradients)."""
    if a.shape[0] > 0:
        with nogil:
            _run(ADD, &a[0], &b[0], &out[0], a.shape[0], 0, num_threads)


def add_relu(const floating[::1] a,   # IN  (n,)
             const floating[::1] b,   # IN  (n,)
             floating[::1] out,       # OUT (n,)
             int num_threads):
    """out = max(a + b, 0) as relu_forward of the sum (a residual block's sum and the ReLU after it)."""
    if a.shape[0] > 0:
        with nogil:
            _run(ADD_RELU, &a[0], &b[0], &out[0], a.shape[0], 0, num_threads)


def adam_update(floating[::1] p,         # IN/OUT (n,) parameter
                const floating[::1] g,   # IN     (n,) gradient (with L2 weight decay already added)
                floating[::1] m,         # IN/OUT (n,) first moment
                floating[::1] v,         # IN/OUT (n,) second moment
                double b1, double b2, double scale, double eps, double step, int num_threads):
    """One Adam step in place: m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g²; p -= step * m / (sqrt(v) scale +
    eps), every constant rounded to the arrays' dtype first (as NumPy rounds a Python float operand)."""
    cdef Py_ssize_t n = p.shape[0], t
    cdef floating fb1 = <floating>b1, fc1 = <floating>(1.0 - b1), fb2 = <floating>b2, fc2 = <floating>(1.0 - b2)
    cdef floating fscale = <floating>scale, feps = <floating>eps, fstep = <floating>step
    if n == 0:
        return
    with nogil:
        if num_threads <= 1:
            _adam(&p[0], &g[0], &m[0], &v[0], n, fb1, fc1, fb2, fc2, fscale, feps, fstep)
        else:
            for t in prange(num_threads, schedule='static', num_threads=num_threads):
                _adam_part(&p[0], &g[0], &m[0], &v[0], n, t, num_threads, fb1, fc1, fb2, fc2, fscale, feps, fstep)
