"""BatchIterator: the batches the eager implementation of batches() made, for the same seed, without copying the
whole shuffled data set."""
import tracemalloc

import numpy as np
import pytest
from numpy.testing import assert_array_equal

from cnn_ext.datasets import BatchIterator, batches, one_hot


def eager_batches(x, labels, batch_size, num_classes=None, shuffle=False, seed=None, drop_last=False):
    """batches() as it was before the iterator: one-hot all targets, permute the whole data set, slice."""
    y = np.asarray(labels)
    num_classes = int(y.max()) + 1 if num_classes is None else num_classes
    dtype = x.dtype if x.dtype in (np.float32, np.float64) else np.dtype(np.float64)
    targets = one_hot(y, num_classes, dtype)
    if shuffle:
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        order = rng.permutation(x.shape[0])
        x, targets = x[order], targets[order]
    stop = x.shape[0] - x.shape[0] % batch_size if drop_last else x.shape[0]
    starts = range(0, stop, batch_size)
    return [x[i:i + batch_size] for i in starts], [targets[i:i + batch_size] for i in starts]


def _data(n=103, dtype=np.float64):
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, 1, 3, 2)).astype(dtype), rng.integers(0, 7, n)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8])
@pytest.mark.parametrize("kw", [dict(batch_size=16), dict(batch_size=10, shuffle=True, seed=3),
                                dict(batch_size=16, shuffle=True, seed=0, drop_last=True),
                                dict(batch_size=103, shuffle=True, seed=9, num_classes=12),
                                dict(batch_size=200, drop_last=False)])
def test_same_batches_as_the_eager_implementation(kw, dtype):
    x, y = _data(dtype=dtype)
    want_x, want_y = eager_batches(x, y, **kw)
    for got_x, got_y in [batches(x, y, **kw), zip(*BatchIterator(x, y, **kw))]:
        got_x, got_y = list(got_x), list(got_y)
        assert len(got_x) == len(want_x) == len(got_y)
        for a, b in zip(got_x + got_y, want_x + want_y):
            assert a.dtype == b.dtype and a.shape == b.shape
            assert_array_equal(a, b)
    assert len(BatchIterator(x, y, **kw)) == len(want_x)


def test_one_generator_gives_the_epochs_of_one_seeded_run():
    """The tutorial's loop takes a fresh batches(..., seed=rng) per epoch from one generator; one iterator per
    epoch on one generator gives the same epochs."""
    x, y = _data()
    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    epochs = []
    for _ in range(3):
        want_x, want_y = eager_batches(x, y, 8, shuffle=True, seed=rng_a)
        got = list(BatchIterator(x, y, 8, shuffle=True, seed=rng_b))
        for (gx, gy), wx, wy in zip(got, want_x, want_y):
            assert_array_equal(gx, wx)
            assert_array_equal(gy, wy)
        epochs.append(np.concatenate([gx for gx, _ in got]))
    assert not np.array_equal(epochs[0], epochs[1])  # a new permutation per epoch


def test_labels_instead_of_one_hot_and_views_without_shuffling():
    x, y = _data()
    it = BatchIterator(x, y, 16, one_hot_targets=False)
    xb, yb = next(it)
    assert np.shares_memory(xb, x) and yb.shape == (16,) and yb.dtype == y.dtype
    assert_array_equal(yb, y[:16])
    assert len(list(it)) == 6  # the rest of the single-use iterator
    assert list(it) == []


def test_an_epoch_never_holds_the_whole_data_set():
    x = np.random.default_rng(0).standard_normal((4000, 1, 16, 16))  # 8.2 MB
    y = np.arange(4000) % 10
    size = x.nbytes

    def peak(run):
        tracemalloc.start()
        try:
            run()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    def one_epoch():
        for xb, yb in BatchIterator(x, y, 32, num_classes=10, shuffle=True, seed=0):
            pass

    lazy = peak(one_epoch)
    eager = peak(lambda: eager_batches(x, y, 32, num_classes=10, shuffle=True, seed=0))
    assert lazy < size / 20, f"one lazy epoch allocated {lazy} bytes at its peak for {size} bytes of data"
    assert eager > size  # the measurement sees a copy of the data set when there is one


def test_errors_before_the_first_batch():
    x, y = _data()
    with pytest.raises(ValueError, match=r"x has shape \(103, 1, 3, 2\) and labels \(102,\)"):
        BatchIterator(x, y[:-1])
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        BatchIterator(x, y, 0)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\], got values in \[0, 6\]"):
        BatchIterator(x, y, num_classes=4)
    with pytest.raises(TypeError, match="labels must be integers"):
        BatchIterator(x, y.astype(np.float64))
    before = x.copy()
    list(BatchIterator(x, y, 7, shuffle=True, seed=1))
    assert_array_equal(x, before)  # the input is never modified
