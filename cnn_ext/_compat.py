"""Names kept for code written against earlier releases of cnn_ext."""
import warnings

import numpy as np


def set_buffer_reuse(enabled: bool) -> bool:
    """Deprecated: cnn_ext no longer reuses result arrays, so there is nothing to turn on or off.

    Every result is a new array (or ``out=``) that cnn_ext never writes again. The argument is still checked,
    the call warns, and it returns False (the setting it had: off).
    """
    if not isinstance(enabled, (bool, np.bool_)):
        raise TypeError(f"enabled must be True or False, got {enabled!r}")
    warnings.warn("set_buffer_reuse is deprecated and does nothing: cnn_ext no longer reuses result arrays "
                  "(pass out= to conv2d_forward / conv2d_input_gradient to write into an array of your own)",
                  DeprecationWarning, stacklevel=2)
    return False


def get_buffer_reuse() -> bool:
    """Deprecated: always False (cnn_ext no longer reuses result arrays; see :func:`set_buffer_reuse`)."""
    return False
