"""Every argument check of cnn_ext, in one place.

Checks raise ``TypeError`` (wrong kind of value) or ``ValueError`` (wrong shape, size or value), with the
argument's name and the shapes in the message, before anything is allocated or changed; the kernels trust what
they are given. The rules:

- **dtype**: arrays hold real numbers (bool, int, uint or float); a computation runs in float32 when every
  array is float32, else in float64; a dtype that float64 cannot hold without loss (long double) is refused.
- **sizes**: ints (or pairs of ints) of at least a minimum and at most ``2**31 - 1`` (the kernels' and BLAS's
  32-bit sizes); an array of more bytes than the machine's physical memory (or than NumPy can describe) is
  refused by name before anything is allocated, never a ``MemoryError``.
- **out=**: C-contiguous, writeable, of the result's shape and dtype, sharing no memory with an input.
"""
from __future__ import annotations

import math
import numbers
import operator
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from numpy.typing import NDArray

INT_MAX = 2**31 - 1  # the kernels' and BLAS's 32-bit sizes
MAX_BYTES = np.iinfo(np.intp).max  # the largest array NumPy can describe
FLOAT32, FLOAT64 = np.dtype(np.float32), np.dtype(np.float64)


# ---- arrays and dtypes ---------------------------------------------------------------------------

def as_real_array(a: object, name: str) -> NDArray[Any]:
    """``a`` as an ndarray of real numbers (no copy when it already is one)."""
    if type(a) is np.ndarray and a.dtype.kind in "biuf":  # the common case, without the generic steps
        return a
    if a is None:
        raise TypeError(f"{name} must be an array of numbers, got None")
    try:
        arr = np.asarray(a)
    except (ValueError, TypeError) as exc:  # ragged nested lists and the like
        raise ValueError(f"{name} could not be converted to an array: {exc}") from None
    if arr.dtype.kind not in "biuf":
        what = "complex" if arr.dtype.kind == "c" else str(arr.dtype)
        raise TypeError(f"{name} must hold real numbers (bool, int or float), got dtype {what}")
    return arr


def compute_dtype(arrays, names):
    """float32 when every array is float32, float64 for any other mix of real dtypes that float64 holds."""
    dt = arrays[0].dtype
    if dt is FLOAT64 or dt is FLOAT32:  # the common case: one native float dtype throughout (NumPy's own
        for a in arrays:                # descriptors, tested by identity), no result_type call
            if a.dtype is not dt:
                break
        else:
            return dt
    dt = np.result_type(*arrays)
    if dt == FLOAT32 or dt == FLOAT64:
        return dt
    if np.can_cast(dt, FLOAT64, casting="safe"):
        return FLOAT64
    raise TypeError(f"{', '.join(names)}: dtype {dt} cannot be computed in float64 without loss; "
                    f"cast to float64 first")


def as_float_array(a: object, name: str) -> NDArray[np.floating[Any]]:
    """``a`` as an array in its computation dtype (float32 stays float32, other reals become float64)."""
    arr = as_real_array(a, name)
    return arr.astype(compute_dtype((arr,), (name,)), copy=False)


def contiguous(arr, dtype):
    """C-contiguous and aligned in ``dtype``: what the kernels read (a copy only when needed)."""
    flags = arr.flags
    if arr.dtype is dtype and flags.c_contiguous and flags.aligned:
        return arr
    return np.require(arr, dtype=dtype, requirements=("C", "A"))


def check_ndim(arr, ndim, name, layout):
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D {layout}, got shape {arr.shape}")


def float_dtype(dtype, name="dtype"):
    """``dtype`` as np.float32 or np.float64, else TypeError."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{name} must be float32 or float64, got {dtype!r}") from None
    if dt != FLOAT32 and dt != FLOAT64:
        raise TypeError(f"{name} must be float32 or float64, got {dt}")
    return dt


# ---- numbers -------------------------------------------------------------------------------------

def positive_int(value, name, maximum=None):
    """``value`` as a Python int >= 1 (and <= maximum when given); bools are refused."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a positive int, got {value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be a positive int, got {value!r}") from None
    if v < 1:
        raise ValueError(f"{name} must be >= 1, got {v}")
    if maximum is not None and v > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {v}")
    return v


def ints(value, name, minimum, length=2):
    """An int or a pair of ints, each in [minimum, 2**31 - 1], as a tuple of Python ints."""
    if type(value) is int and minimum <= value <= INT_MAX:  # the common case, without the generic checks
        return (value,) * length
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    try:
        vals = (operator.index(value),) * length
    except TypeError:
        try:
            vals = tuple(operator.index(v) for v in value)
        except TypeError:
            raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}") from None
        if len(vals) != length or any(isinstance(v, (bool, np.bool_)) for v in value):
            raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    if any(v < minimum for v in vals):
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    if any(v > INT_MAX for v in vals):
        raise ValueError(f"{name} must be <= 2**31 - 1 = {INT_MAX} (the kernels' 32-bit sizes), got {value!r}")
    return vals


def is_real(value):
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def real(value, name, *, minimum=0.0, strict=False, maximum=None):
    """A finite real number >= minimum (> with strict) and < maximum, as a float."""
    if not is_real(value):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < minimum or (strict and value == minimum) or \
            (maximum is not None and value >= maximum):
        bounds = f"{'>' if strict else '>='} {minimum}" + (f" and < {maximum}" if maximum is not None else "")
        raise ValueError(f"{name} must be {bounds}, got {value!r}")
    return value


def learning_rate(value, grads, owner, order, call=None):
    """A plain-SGD learning rate as a float: any finite real number (NumPy scalars and 0-d arrays included).

    Errors quote ``{owner}.update({order})``: Network.update and Layer.update take their two arguments in
    opposite orders, so a swap is named when it looks like one; or ``call`` (fit), where nothing can be swapped.
    """
    if type(value) is float and math.isfinite(value):  # the common case
        return value
    update = call is None
    call = call or f"{owner}.update({order})"
    if not is_real(value):
        arr = value if isinstance(value, np.ndarray) else None
        if arr is None or arr.ndim != 0 or arr.dtype.kind not in "iuf":
            swapped = update and (is_real(grads) or isinstance(value, (list, tuple, Mapping)))
            hint = "; did you swap the arguments?" if swapped else ""
            raise TypeError(f"{call}: learning_rate must be a real number, got {type(value).__name__}{hint}")
    lr = float(value)
    if not math.isfinite(lr):
        raise ValueError(f"{call}: learning_rate must be finite, got {lr}")
    return lr


# ---- convolution geometry ------------------------------------------------------------------------

def padding_spec(padding):
    """``padding`` checked, in the plain Python form the layers keep (JSON-serialisable): 'valid' / 'same',
    an int, (ph, pw) or ((top, bottom), (left, right)); NumPy integers and integer arrays are accepted."""
    if isinstance(padding, str):
        mode = padding.lower()
        if mode not in ("valid", "same"):
            raise ValueError(f"padding must be 'valid', 'same', an int or a pair, got {padding!r}")
        return mode
    try:
        pairs = [tuple(p) for p in padding]
    except TypeError:
        pairs = None
    if pairs is not None and len(pairs) == 2:
        if all(len(p) == 2 for p in pairs):
            return (ints(pairs[0], "padding", 0), ints(pairs[1], "padding", 0))
        raise ValueError(f"padding as ((top, bottom), (left, right)) needs two pairs, got {padding!r}")
    ph, pw = ints(padding, "padding", 0)
    try:
        operator.index(padding)
    except TypeError:  # a pair
        return (ph, pw)
    return ph


def padding_sides(padding, KH, KW, stride):
    """(top, bottom, left, right) from any padding spec; 'same' puts the odd extra row/column at the end."""
    if type(padding) is int and 0 <= padding <= INT_MAX:  # the common case
        return (padding,) * 4
    spec = padding_spec(padding)
    if spec == "valid":
        return (0, 0, 0, 0)
    if spec == "same":
        if stride != (1, 1):
            raise ValueError(f"padding='same' needs stride 1, got stride={stride}")
        return ((KH - 1) // 2, KH - 1 - (KH - 1) // 2, (KW - 1) // 2, KW - 1 - (KW - 1) // 2)
    if type(spec) is int:
        return (spec,) * 4
    if type(spec[0]) is tuple:
        return spec[0] + spec[1]
    return (spec[0], spec[0], spec[1], spec[1])


def dilation(value):
    """``dilation`` as a pair of ints >= 1 (an int or a pair, as ``stride``)."""
    return ints(value, "dilation", 1)


def dilated(KH, KW, DH, DW, kname, kshape):
    """(KH', KW') of a kernel with DH - 1 (DW - 1) zeros between its taps, or ValueError past 32 bits."""
    KDH, KDW = (KH - 1) * DH + 1, (KW - 1) * DW + 1
    if max(KDH, KDW) > INT_MAX:
        raise ValueError(f"{kname} {kshape} with dilation {(DH, DW)} spans {KDH}x{KDW}; sizes must be "
                         f"<= 2**31 - 1 = {INT_MAX}")
    return KDH, KDW


def groups(value, C_in, C_out, in_name, in_shape=None, out_name="", out_shape=None):
    """``groups`` as an int >= 1 that divides the input channels C_in (of ``in_name``) and the output channels
    C_out (of ``out_name``), else ValueError naming both arrays and their shapes."""
    G = positive_int(value, "groups", INT_MAX)
    if C_in % G or C_out % G:
        def where(name, shape, C):
            return f"{name}={C}" if shape is None else f"{C}, {name} of shape {shape}"
        raise ValueError(f"groups={G} must divide the input channels ({where(in_name, in_shape, C_in)}) and the "
                         f"output channels ({where(out_name, out_shape, C_out)})")
    return G


def output_hw(H, W, KH, KW, SH, SW, pads, xname, kname, xshape=None, kshape=None):
    """(OH, OW) of a sliding window, or ValueError naming both arguments: a kernel larger than the padded input,
    or a size past the kernels' 32-bit limit."""
    top, bottom, left, right = pads
    Hp, Wp = H + top + bottom, W + left + right
    xs = xshape if xshape is not None else (H, W)
    ks = kshape if kshape is not None else (KH, KW)
    if KH > Hp or KW > Wp:
        pad = f" (padded to {Hp}x{Wp})" if any(pads) else ""
        raise ValueError(f"{kname} {ks} is larger than {xname} {xs}{pad}: kernel {KH}x{KW} > input {Hp}x{Wp}")
    OH, OW = (Hp - KH) // SH + 1, (Wp - KW) // SW + 1
    if max(Hp, Wp, OH, OW) > INT_MAX:
        pad = f", padding {tuple(pads)}" if any(pads) else ""
        raise ValueError(f"{xname} {xs} with {kname} {ks}{pad} and stride {(SH, SW)}: input {Hp}x{Wp}, kernel "
                         f"{KH}x{KW}, output {OH}x{OW}; sizes must be <= 2**31 - 1 = {INT_MAX}")
    return OH, OW


# ---- allocations and outputs ---------------------------------------------------------------------

def _physical_memory():
    """The machine's physical memory in bytes, or the largest array NumPy can describe where the OS does not say
    (sysconf is POSIX; on Windows, the allocation itself is left to fail)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return MAX_BYTES
    return total if total > 0 else MAX_BYTES


PHYSICAL_MEMORY = _physical_memory()
_SMALL = PHYSICAL_MEMORY // 16  # elements that fit whatever the itemsize (complex128 at most): no message needed


def allocation(shape, dtype, what):
    """ValueError, before any allocation, for an array of more bytes than this machine's physical memory (or
    than NumPy can describe): a size that can never be allocated is a wrong argument, to be named, not a
    ``MemoryError``. ``what()`` starts the message (a callable, so that the common case formats nothing)."""
    size = math.prod(shape)
    if size <= _SMALL:
        return
    nbytes = size * np.dtype(dtype).itemsize
    limit = min(PHYSICAL_MEMORY, MAX_BYTES)
    if nbytes > limit:
        raise ValueError(f"{what()} of shape {tuple(shape)}: {nbytes} bytes, more than this machine's memory "
                         f"({limit} bytes) can hold")


def output(out, shape, dtype, inputs, names):
    """``out`` checked as the destination of a result of this shape and dtype; a new array when None."""
    if out is None:
        return np.empty(shape, dtype)
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a NumPy array, got {type(out).__name__}")
    if out.shape != shape or out.dtype != dtype:
        raise ValueError(f"out has shape {out.shape} and dtype {out.dtype}; the result has shape {shape} and "
                         f"dtype {np.dtype(dtype)}")
    if not (out.flags.c_contiguous and out.flags.writeable and out.flags.aligned):
        raise ValueError(f"out must be C-contiguous, aligned and writeable (shape {out.shape})")
    for a, name in zip(inputs, names):
        if np.may_share_memory(out, a):
            raise ValueError(f"out shares memory with {name} (shape {a.shape}); the result would overwrite its "
                             f"own input")
    return out
