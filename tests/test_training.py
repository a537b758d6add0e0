"""fit(): learning, seeded shuffling, the tutorial's SGD path, early stopping, progress output, errors."""
import numpy as np
import pytest
from numpy.testing import assert_array_equal

from cnn_ext import Dense, Network, ReLU
from cnn_ext.optim import Adam
from cnn_ext.training import fit


def _data(n=240, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 4))
    y = (X @ np.array([1.0, -2.0, 0.5, 1.0]) > 0).astype(np.int64)
    return X, y


def _net(seed=0):
    return Network([Dense(4, 16, init="he_normal", seed=seed), ReLU(), Dense(16, 2, init="glorot_uniform", seed=seed + 1)])


def _params(net):
    return [p.copy() for _, _, p in net.parameters()]


def test_fit_learns_and_reports_per_epoch_metrics():
    X, y = _data()
    Xv, yv = _data(100, seed=1)
    net = _net()
    hist = fit(net, X, y, epochs=8, batch_size=16, optimizer=Adam(0.01), seed=0, validation_data=(Xv, yv),
               progress=False, verbose=False)
    assert hist["epochs_run"] == 8
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "time"):
        assert len(hist[key]) == 8
    assert hist["loss"][-1] < 0.5 * hist["loss"][0]
    assert hist["accuracy"][-1] > 0.93 and hist["val_accuracy"][-1] > 0.9
    assert 1 <= hist["best_epoch"] <= 8


def test_same_seed_same_run_and_different_seed_different_run():
    X, y = _data()
    runs = []
    for seed in (3, 3, 4):
        net = _net()
        hist = fit(net, X, y, epochs=2, batch_size=32, optimizer=Adam(0.01), seed=seed, progress=False,
                   verbose=False)
        runs.append((hist["loss"], _params(net)))
    assert runs[0][0] == runs[1][0]
    assert all(np.array_equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))
    assert not all(np.array_equal(a, b) for a, b in zip(runs[0][1], runs[2][1]))


def test_learning_rate_is_plain_sgd_on_the_exact_gradient():
    from cnn_ext import mse, mse_loss
    from cnn_ext.losses import exact

    X, y = _data(64)
    T = np.eye(2)[y]
    a, b = _net(), _net()
    fit(a, X, T, epochs=2, batch_size=16, loss="mse", learning_rate=0.1, shuffle=False, progress=False,
        verbose=False)
    for _ in range(2):
        for i in range(0, 64, 16):
            pred = b.forward(X[i:i + 16])
            mse(pred, T[i:i + 16])
            b.update(0.1, b.backward(exact(mse_loss(pred, T[i:i + 16]))))  # fit's gradients are exact
    for pa, pb in zip(_params(a), _params(b)):
        assert_array_equal(pa, pb)
    # integer labels are one-hot encoded for 'mse'
    c = _net()
    fit(c, X, y, epochs=2, batch_size=16, loss="mse", learning_rate=0.1, shuffle=False, progress=False,
        verbose=False)
    for pa, pc in zip(_params(a), _params(c)):
        assert_array_equal(pa, pc)


def test_early_stopping_stops_and_restores_the_best_parameters():
    X, y = _data(32)
    scripted = iter([5.0, 4.0, 4.5, 4.6, 4.7, 1.0])

    def loss(pred, yb):  # one batch per epoch: the epoch losses are the scripted values
        return next(scripted), np.ones_like(pred)

    net = _net()
    hist = fit(net, X, y, epochs=6, batch_size=32, loss=loss, learning_rate=0.01, early_stopping=2, shuffle=False,
               progress=False, verbose=False)
    assert hist["loss"] == [5.0, 4.0, 4.5, 4.6] and hist["epochs_run"] == 4 and hist["best_epoch"] == 2
    ref = _net()
    fit(ref, X, y, epochs=2, batch_size=32, loss=lambda p, t: (0.0, np.ones_like(p)), learning_rate=0.01,
        shuffle=False, progress=False, verbose=False)
    for p, q in zip(_params(net), _params(ref)):
        assert_array_equal(p, q)


def test_on_epoch_end_can_stop_and_change_the_learning_rate():
    X, y = _data(64)
    opt = Adam(0.01)
    seen = []

    def callback(epoch, history):
        seen.append((epoch, len(history["loss"]), opt.lr))
        opt.lr *= 0.5
        return epoch == 2

    hist = fit(_net(), X, y, epochs=5, batch_size=32, optimizer=opt, progress=False, verbose=False,
               on_epoch_end=callback)
    assert hist["epochs_run"] == 2
    assert seen == [(1, 1, 0.01), (2, 2, 0.005)] and opt.lr == 0.0025


def test_progress_bar_and_verbose_output(capsys):
    pytest.importorskip("tqdm")
    X, y = _data(64)
    fit(_net(), X, y, epochs=1, batch_size=16, optimizer=Adam(), progress=True)
    err = capsys.readouterr().err
    assert "epoch 1/1" in err and "4/4" in err
    fit(_net(), X, y, epochs=1, batch_size=16, optimizer=Adam(), progress=False, verbose=True)
    out = capsys.readouterr().out
    assert out.startswith("epoch 1/1: loss ") and "acc " in out


def test_argument_errors():
    X, y = _data(16)
    net = _net()
    with pytest.raises(ValueError, match="exactly one of optimizer"):
        fit(net, X, y, epochs=1)
    with pytest.raises(ValueError, match="exactly one of optimizer"):
        fit(net, X, y, epochs=1, optimizer=Adam(), learning_rate=0.1)
    with pytest.raises(TypeError, match="optimizer must have a step"):
        fit(net, X, y, epochs=1, optimizer="adam")
    with pytest.raises(ValueError, match="loss must be one of"):
        fit(net, X, y, epochs=1, learning_rate=0.1, loss="hinge")
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        fit(net, X, y, epochs=0, learning_rate=0.1)
    with pytest.raises(ValueError, match=r"X has shape \(16, 4\) and y has shape \(15,\)"):
        fit(net, X, y[:15], epochs=1, learning_rate=0.1)
    with pytest.raises(ValueError, match="validation_data has shapes"):
        fit(net, X, y, epochs=1, learning_rate=0.1, validation_data=(X, y[:3]))
    with pytest.raises(ValueError, match="early_stopping must be >= 1"):
        fit(net, X, y, epochs=1, learning_rate=0.1, early_stopping=0)


@pytest.mark.parametrize("bad, message", [
    (-1, r"labels must be in \[0, 1\] for 2 classes, got values in \[-1, 1\]"),  # was: silently the last class
    (2, r"labels must be in \[0, 1\] for 2 classes, got values in \[0, 2\]"),    # was: a bare IndexError
    (0.5, "must be integer class indices"),                                       # was: silently truncated
])
def test_mse_loss_checks_integer_labels_as_softmax_cross_entropy_does(bad, message):
    X, y = _data(16)
    y = y.astype(np.float64) if isinstance(bad, float) else y.copy()
    y[3] = bad if not isinstance(bad, float) else y[3] + bad
    before = _params(net := _net())
    for loss in ("mse", "softmax_cross_entropy"):
        with pytest.raises(ValueError, match=message):
            fit(net, X, y, epochs=1, batch_size=16, learning_rate=0.1, loss=loss, progress=False, verbose=False)
    for p, q in zip(before, _params(net)):
        assert_array_equal(p, q)
    # and the same check on validation labels
    X2, y2 = _data(16, seed=1)
    with pytest.raises(ValueError, match=message):
        fit(_net(), X2, y2, epochs=1, batch_size=16, learning_rate=0.1, loss="mse", validation_data=(X, y),
            progress=False, verbose=False)


def test_whole_number_float_labels_report_accuracy_as_integer_labels_do():
    """The losses take (N,) float labels of whole numbers as class indices; fit reported accuracy None for
    them (QA pass). The same run with int64 and float64 labels reports the same history."""
    X, y = _data()
    runs = [fit(_net(), X, labels, epochs=2, batch_size=16, learning_rate=0.1, seed=0, progress=False,
                verbose=False, validation_data=(X[:50], labels[:50])) for labels in (y, y.astype(np.float64))]
    assert runs[0]["accuracy"][-1] is not None
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert runs[0][key] == runs[1][key]
    # fractional values are not labels: no accuracy, and the loss refuses them
    with pytest.raises(ValueError, match="integer class indices"):
        fit(_net(), X, y + 0.5, epochs=1, learning_rate=0.1, progress=False, verbose=False)
