"""cnn_ext.augment (random shifts and flips) and fit(augment=): per-sample results against a loop oracle, the
training batches only, seeded runs, shuffles unchanged, errors."""
import numpy as np
import pytest
from numpy.testing import assert_array_equal

from cnn_ext import Conv2D, Dense, Flatten, Network, ReLU, fit
from cnn_ext.augment import Compose, RandomHorizontalFlip, RandomShift
from cnn_ext.optim import Adam


def _shifted(image, dr, dc):
    """image (..., H, W) moved down by dr and right by dc pixels, zeros coming in: the oracle, one sample."""
    out = np.zeros_like(image)
    H, W = image.shape[-2:]
    src_r, dst_r = slice(max(0, -dr), min(H, H - dr)), slice(max(0, dr), min(H, H + dr))
    src_c, dst_c = slice(max(0, -dc), min(W, W - dc)), slice(max(0, dc), min(W, W + dc))
    out[..., dst_r, dst_c] = image[..., src_r, src_c]
    return out


@pytest.mark.parametrize("shape", [(40, 7, 9), (40, 3, 6, 5), (1, 1, 4, 4)])
@pytest.mark.parametrize("pixels", [1, 2, 3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_random_shift_moves_each_sample_by_its_own_offset(shape, pixels, dtype):
    x = np.random.default_rng(1).standard_normal(shape).astype(dtype)
    before = x.copy()
    out = RandomShift(pixels)(x, np.random.default_rng(7))
    assert out.shape == x.shape and out.dtype == x.dtype and out is not x
    assert_array_equal(x, before)  # the input is never modified
    rows, cols = np.random.default_rng(7).integers(0, 2 * pixels + 1, size=(2, shape[0]))
    for n in range(shape[0]):  # the offsets are (pixels - row, pixels - col): the crop's corner in the padding
        assert_array_equal(out[n], _shifted(x[n], pixels - rows[n], pixels - cols[n]))


def test_random_shift_draws_every_offset_and_differs_between_seeds():
    x = np.random.default_rng(0).standard_normal((500, 1, 8, 8))
    out = RandomShift(2)(x, np.random.default_rng(0))
    found = set()
    for n in range(len(x)):
        found |= {(dr, dc) for dr in range(-2, 3) for dc in range(-2, 3)
                  if np.array_equal(out[n], _shifted(x[n], dr, dc))}
    assert found == {(dr, dc) for dr in range(-2, 3) for dc in range(-2, 3)}
    assert_array_equal(out, RandomShift(2)(x, np.random.default_rng(0)))
    assert not np.array_equal(out, RandomShift(2)(x, np.random.default_rng(1)))


@pytest.mark.parametrize("p", [0.0, 0.5, 1.0])
def test_random_horizontal_flip_mirrors_a_share_p_of_the_samples(p):
    x = np.random.default_rng(2).standard_normal((400, 2, 5, 6)).astype(np.float32)
    before = x.copy()
    out = RandomHorizontalFlip(p)(x, np.random.default_rng(3))
    assert_array_equal(x, before)
    flipped = np.array([np.array_equal(o, s[..., ::-1]) for o, s in zip(out, x)])
    kept = np.array([np.array_equal(o, s) for o, s in zip(out, x)])
    assert np.all(flipped ^ kept)  # each sample is either mirrored or left as it is
    assert_array_equal(flipped, np.random.default_rng(3).random(400) < p)


def test_compose_applies_in_order_with_one_generator():
    x = np.random.default_rng(4).standard_normal((30, 1, 6, 6))
    both = Compose([RandomShift(1), RandomHorizontalFlip(1.0)])(x, np.random.default_rng(5))
    assert_array_equal(both, RandomShift(1)(x, np.random.default_rng(5))[..., ::-1])


@pytest.mark.parametrize("make, error, match", [
    (lambda: RandomShift(0), ValueError, "pixels"),
    (lambda: RandomShift(-1), ValueError, "pixels"),
    (lambda: RandomShift(1.5), TypeError, "pixels"),
    (lambda: RandomHorizontalFlip(1.5), ValueError, "p must be"),
    (lambda: RandomHorizontalFlip(float("nan")), ValueError, "p must be"),
    (lambda: RandomHorizontalFlip("x"), TypeError, "p must be"),
    (lambda: RandomShift(True), TypeError, "pixels"),
    (lambda: Compose([RandomShift(1), 3]), TypeError, r"augmentations\[1\]"),
])
def test_bad_arguments_are_refused(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_bad_batches_are_refused_by_name_and_shape():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"RandomShift.*\(4, 5\)"):
        RandomShift(1)(np.zeros((4, 5)), rng)
    with pytest.raises(ValueError, match=r"RandomHorizontalFlip.*\(3,\)"):
        RandomHorizontalFlip()(np.zeros(3), rng)
    with pytest.raises(ValueError, match=r"RandomShift\(4\).*\(1, 4, 3\).*pixels must be less than"):
        RandomShift(4)(np.zeros((2, 1, 4, 3)), rng)  # an absurd shift is refused before any allocation
    with pytest.raises(ValueError, match="pixels must be less than"):
        RandomShift(10 ** 12)(np.zeros((2, 1, 4, 3)), rng)


# -- fit(augment=) ------------------------------------------------------------------------------------------------

def _images(n=96, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 1, 6, 6))
    y = (X[:, 0, :3].sum(axis=(1, 2)) > 0).astype(np.int64)
    return X, y


def _cnn(seed=0):
    return Network([Conv2D(1, 3, 3, seed=seed), ReLU(), Flatten(), Dense(3 * 4 * 4, 2, seed=seed + 1)])


def _params(net):
    return [p.copy() for _, _, p in net.parameters()]


class _Recorder:
    """An augmentation that records what it is given and passes it through (or applies ``inner``)."""

    def __init__(self, inner=None):
        self.inner, self.batches = inner, []

    def __call__(self, x, rng):
        self.batches.append(x.copy())
        return x if self.inner is None else self.inner(x, rng)


def test_fit_augments_every_training_batch_and_never_the_validation_data():
    X, y = _images()
    Xv, yv = _images(40, seed=1)
    recorder = _Recorder()
    fit(_cnn(), X, y, epochs=2, batch_size=32, optimizer=Adam(0.01), seed=0, validation_data=(Xv, yv),
        progress=False, verbose=False, augment=recorder)
    assert len(recorder.batches) == 2 * 3
    seen = np.concatenate(recorder.batches)
    assert seen.shape == (2 * 96, 1, 6, 6)
    rows = {r.tobytes() for r in seen}
    assert rows == {r.tobytes() for r in X}  # each epoch's batches are the training samples, none of validation


def test_fit_with_an_identity_augmentation_keeps_the_shuffles_and_results_of_the_seed():
    X, y = _images()
    plain, passed = _cnn(), _cnn()
    h0 = fit(plain, X, y, epochs=3, batch_size=16, optimizer=Adam(0.01), seed=3, progress=False, verbose=False)
    h1 = fit(passed, X, y, epochs=3, batch_size=16, optimizer=Adam(0.01), seed=3, progress=False, verbose=False,
             augment=lambda x, rng: x)
    assert h0["loss"] == h1["loss"]
    assert all(np.array_equal(a, b) for a, b in zip(_params(plain), _params(passed)))


def test_fit_trains_on_the_augmented_batches_seeded_and_leaves_x_alone():
    X, y = _images()
    before = X.copy()
    runs = []
    for seed in (5, 5, 6):
        net, recorder = _cnn(), _Recorder(RandomShift(1))
        fit(net, X, y, epochs=2, batch_size=32, optimizer=Adam(0.01), seed=seed, progress=False, verbose=False,
            augment=recorder)
        runs.append(_params(net))
    assert_array_equal(X, before)
    assert all(np.array_equal(a, b) for a, b in zip(runs[0], runs[1]))  # the same seed, the same shifts
    assert not all(np.array_equal(a, b) for a, b in zip(runs[0], runs[2]))
    plain = _cnn()
    fit(plain, X, y, epochs=2, batch_size=32, optimizer=Adam(0.01), seed=5, progress=False, verbose=False)
    assert not all(np.array_equal(a, b) for a, b in zip(runs[0], _params(plain)))  # the shifts were trained on


def test_fit_refuses_a_bad_augment_before_training():
    X, y = _images()
    net = _cnn()
    before = _params(net)
    with pytest.raises(TypeError, match="augment must be callable"):
        fit(net, X, y, epochs=1, optimizer=Adam(0.01), progress=False, verbose=False, augment=RandomShift)
    with pytest.raises(TypeError, match="augment must be callable"):
        fit(net, X, y, epochs=1, optimizer=Adam(0.01), progress=False, verbose=False, augment=3)
    with pytest.raises(ValueError, match=r"augment returned shape \(32, 1, 5, 5\) for a batch of shape "
                                         r"\(32, 1, 6, 6\)"):
        fit(net, X, y, epochs=1, batch_size=32, optimizer=Adam(0.01), progress=False, verbose=False,
            augment=lambda x, rng: x[..., :5, :5])
    assert all(np.array_equal(a, b) for a, b in zip(before, _params(net)))
