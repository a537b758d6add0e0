"""fit's callbacks: the hooks and their order, early stopping, checkpoints, the schedules in fit, the history and
its plot, validation_split, train/eval modes, resuming, and MPI (checkpoints from rank 0 only)."""
import sys

import numpy as np
import pytest
from numpy.testing import assert_array_equal

import cnn_ext
from cnn_ext import Dense, Network, ReLU
from cnn_ext.callbacks import Callback, EarlyStopping, History, ModelCheckpoint
from cnn_ext.optim import SGD, Adam, AdamW
from cnn_ext.schedules import CosineAnnealingLR, OneCycleLR, ReduceLROnPlateau, StepLR
from cnn_ext.training import fit
from helpers.modes import ModeProbe

QUIET = dict(progress=False, verbose=False)


def _data(n=96, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 4))
    y = (X @ np.array([1.0, -2.0, 0.5, 1.0]) > 0).astype(np.int64)
    return X, y


def _net(seed=0, probe=False):
    return Network([Dense(4, 16, init="he_normal", seed=seed), ModeProbe() if probe else ReLU(),
                    Dense(16, 2, init="glorot_uniform", seed=seed + 1)])


def _params(net):
    return [p.copy() for _, _, p in net.parameters()]


def _assert_same_params(a, b):
    for p, q in zip(_params(a) if not isinstance(a, list) else a, _params(b) if not isinstance(b, list) else b):
        assert_array_equal(p, q)


class Recorder(Callback):
    def __init__(self, stop_at=None):
        self.events, self.stop_at = [], stop_at

    def on_train_begin(self, logs=None):
        self.events.append(("train_begin",))

    def on_epoch_begin(self, epoch, logs=None):
        self.events.append(("epoch_begin", epoch))

    def on_batch_end(self, batch, logs=None):
        self.events.append(("batch_end", batch, logs["size"]))

    def on_epoch_end(self, epoch, logs=None):
        self.events.append(("epoch_end", epoch, sorted(logs)))
        return epoch == self.stop_at

    def on_train_end(self, logs=None):
        self.events.append(("train_end",))


def test_hooks_in_order_with_context_and_logs():
    X, y = _data(40)
    net, opt, rec = _net(), Adam(0.01), Recorder()
    hist = fit(net, X, y, epochs=2, batch_size=16, optimizer=opt, callbacks=[rec], validation_data=(X, y),
               **QUIET)
    keys = ["accuracy", "loss", "lr", "time", "val_accuracy", "val_loss"]
    epoch = [("batch_end", 1, 16), ("batch_end", 2, 16), ("batch_end", 3, 8)]
    assert rec.events == [("train_begin",), ("epoch_begin", 1), *epoch, ("epoch_end", 1, keys),
                          ("epoch_begin", 2), *epoch, ("epoch_end", 2, keys), ("train_end",)]
    assert rec.network is net and rec.optimizer is opt and rec.history is hist and rec.is_root


def test_a_callback_stops_training_and_every_callback_still_sees_the_epoch():
    X, y = _data(32)
    first, second = Recorder(stop_at=2), Recorder()
    hist = fit(_net(), X, y, epochs=5, batch_size=32, learning_rate=0.1, callbacks=[first, second], **QUIET)
    assert hist["epochs_run"] == 2
    assert [e for e in second.events if e[0] == "epoch_end"][-1][1] == 2 and second.events[-1] == ("train_end",)


def _scripted(values):
    it = iter(values)
    return lambda pred, yb: (next(it), np.ones_like(pred))  # one batch per epoch: the epoch's loss


@pytest.mark.parametrize("restore_best", [True, False])
def test_early_stopping_callback_is_fits_early_stopping(restore_best):
    X, y = _data(32)
    losses = [5.0, 4.0, 4.5, 4.6, 4.7, 1.0]
    a, b = _net(), _net()
    ha = fit(a, X, y, epochs=6, batch_size=32, loss=_scripted(losses), learning_rate=0.01, early_stopping=2,
             restore_best=restore_best, shuffle=False, **QUIET)
    stopper = EarlyStopping(patience=2, restore_best=restore_best)
    hb = fit(b, X, y, epochs=6, batch_size=32, loss=_scripted(losses), learning_rate=0.01, callbacks=[stopper],
             shuffle=False, **QUIET)
    assert ha["loss"] == hb["loss"] == [5.0, 4.0, 4.5, 4.6] and hb["epochs_run"] == 4
    assert (stopper.best, stopper.best_epoch, stopper.stopped_epoch) == (4.0, 2, 4)
    _assert_same_params(a, b)
    best = _net()  # the parameters after epoch 2
    fit(best, X, y, epochs=2, batch_size=32, loss=_scripted(losses), learning_rate=0.01, shuffle=False, **QUIET)
    assert all(np.array_equal(p, q) for p, q in zip(_params(b), _params(best))) == restore_best


def test_early_stopping_on_accuracy_maximises_and_refuses_an_unknown_monitor():
    X, y = _data(64)
    stopper = EarlyStopping(monitor="val_accuracy", patience=1, min_delta=0.5)  # no gain of 50 points: stop
    hist = fit(_net(), X, y, epochs=5, batch_size=16, optimizer=Adam(0.01), validation_data=(X, y),
               callbacks=[stopper], **QUIET)
    assert stopper.mode == "max" and hist["epochs_run"] == 2 and stopper.best == hist["val_accuracy"][0]
    net = _net()
    before = _params(net)
    with pytest.raises(ValueError, match=r"monitor='val_acc' is not among the epoch's logs \['accuracy', 'loss'"):
        fit(net, X, y, epochs=2, batch_size=64, learning_rate=0.1, callbacks=[EarlyStopping("val_acc")], **QUIET)
    assert not any(np.array_equal(p, q) for p, q in zip(before, _params(net)))  # the first epoch ran
    with pytest.raises(ValueError, match="patience must be >= 1"):
        EarlyStopping(patience=0)
    with pytest.raises(ValueError, match="mode must be 'auto', 'min' or 'max'"):
        EarlyStopping(mode="best")


class Snapshots(Callback):
    def __init__(self):
        self.params = []

    def on_epoch_end(self, epoch, logs=None):
        self.params.append(_params(self.network))


def test_model_checkpoint_every_epoch_and_best_only(tmp_path):
    X, y = _data(32)
    snaps = Snapshots()
    every = ModelCheckpoint(tmp_path / "ckpt_{epoch:02d}_{loss:.1f}")
    best = ModelCheckpoint(tmp_path / "best.npz", monitor="loss", save_best_only=True)
    fit(_net(), X, y, epochs=5, batch_size=32, loss=_scripted([3.0, 2.0, 2.5, 1.0, 1.5]), learning_rate=0.01,
        shuffle=False, callbacks=[snaps, every, best], **QUIET)
    assert every.saved == [str(tmp_path / f"ckpt_{e:02d}_{v:.1f}.npz")
                           for e, v in zip(range(1, 6), [3.0, 2.0, 2.5, 1.0, 1.5])]
    for path, params in zip(every.saved, snaps.params):
        _assert_same_params(cnn_ext.load(path), params)
    assert best.saved == [str(tmp_path / "best.npz")] * 3 and best.best == 1.0  # epochs 1, 2 and 4
    _assert_same_params(cnn_ext.load(best.saved[-1]), snaps.params[3])
    with pytest.raises(ValueError, match="cannot format path"):
        fit(_net(), X, y, epochs=1, batch_size=32, learning_rate=0.1,
            callbacks=[ModelCheckpoint(tmp_path / "{val_loss}")], **QUIET)
    with pytest.raises(TypeError, match="path must be a str or os.PathLike"):
        ModelCheckpoint(3)


def test_step_lr_in_fit_is_the_hand_written_decay():
    X, y = _data(64)
    a, b = _net(), _net()
    opt_a = SGD(0.1, momentum=0.9)
    ha = fit(a, X, y, epochs=5, batch_size=16, optimizer=opt_a, seed=0, callbacks=[StepLR(opt_a, 2, 0.5)], **QUIET)
    opt_b = SGD(0.1, momentum=0.9)

    def by_hand(epoch, history):
        if epoch % 2 == 0:
            opt_b.lr *= 0.5

    hb = fit(b, X, y, epochs=5, batch_size=16, optimizer=opt_b, seed=0, on_epoch_end=by_hand, **QUIET)
    assert ha["lr"] == hb["lr"] == [0.1, 0.1, 0.05, 0.05, 0.025]
    _assert_same_params(a, b)


def test_one_cycle_steps_after_every_batch_and_plateau_reads_the_validation_loss():
    X, y = _data(64)
    opt = SGD(0.01, momentum=0.9)
    sched = OneCycleLR(opt, max_lr=0.1, epochs=3, steps_per_epoch=4)
    seen = []

    class LR(Callback):
        def on_batch_end(self, batch, logs=None):
            seen.append(logs["lr"])

    hist = fit(_net(), X, y, epochs=3, batch_size=16, optimizer=opt, callbacks=[LR(), sched], **QUIET)
    assert sched.last_epoch == 12 and hist["lr"] == [seen[0], seen[4], seen[8]]
    ref_opt = SGD(0.01, momentum=0.9)
    ref = OneCycleLR(ref_opt, max_lr=0.1, total_steps=12)
    expected = []
    for _ in range(12):
        expected.append(ref_opt.lr)
        ref.step()
    assert seen == expected  # the lr each step used
    opt = Adam(0.01)
    # no epoch after the first improves by 10: the learning rate halves after epochs 2 and 3
    plateau = ReduceLROnPlateau(opt, patience=0, factor=0.5, threshold=10.0, threshold_mode="abs")
    hist = fit(_net(), X, y, epochs=3, batch_size=16, optimizer=opt, validation_data=(X, y), callbacks=[plateau],
               **QUIET)
    assert plateau.best == hist["val_loss"][0] and hist["lr"] == [0.01, 0.01, 0.005] and opt.lr == 0.0025


def test_fit_refuses_bad_callbacks_before_training():
    X, y = _data(16)
    net = _net()
    before = _params(net)
    opt = SGD(0.1)
    with pytest.raises(ValueError, match=r"callbacks\[1\] \(StepLR\) schedules another optimizer than fit's"):
        fit(net, X, y, epochs=1, optimizer=opt, callbacks=[Recorder(), StepLR(SGD(0.1), 1)], **QUIET)
    with pytest.raises(ValueError, match="schedules another optimizer"):
        fit(net, X, y, epochs=1, learning_rate=0.1, callbacks=[StepLR(opt, 1)], **QUIET)
    with pytest.raises(TypeError, match=r"callbacks\[0\] must be a cnn_ext.callbacks.Callback"):
        fit(net, X, y, epochs=1, optimizer=opt, callbacks=[lambda epoch, logs: None], **QUIET)
    _assert_same_params(net, before)
    assert opt.lr == 0.1


def test_history_is_a_dict_with_lr_and_plots_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    X, y = _data(64)
    hist = fit(_net(), X, y, epochs=3, batch_size=16, learning_rate=0.1, validation_data=(X[:20], y[:20]), **QUIET)
    assert isinstance(hist, History) and isinstance(hist, dict)
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "lr", "time", "epochs_run", "best_epoch"} == set(hist)
    assert hist["lr"] == [0.1] * 3
    path = hist.plot(tmp_path / "curves.png", title="toy")
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    # the picture has the validation curves: without them it is a different image
    no_val = History({k: v for k, v in hist.items() if not k.startswith("val_")})
    assert open(no_val.plot(tmp_path / "train_only.png", title="toy"), "rb").read() != data
    with pytest.raises(ValueError, match="holds no epoch"):
        History(loss=[]).plot(tmp_path / "empty.png")


def test_history_plot_without_matplotlib_names_the_extra(tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    with pytest.raises(ImportError, match=r"History.plot needs matplotlib: pip install matplotlib .*cnn_ext\[plot\]"):
        History(loss=[1.0], accuracy=[None]).plot(tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_validation_split_holds_out_the_last_samples():
    X, y = _data(100)
    a, b = _net(), _net()
    ha = fit(a, X, y, epochs=2, batch_size=16, optimizer=Adam(0.01), seed=1, validation_split=0.25, **QUIET)
    hb = fit(b, X[:75], y[:75], epochs=2, batch_size=16, optimizer=Adam(0.01), seed=1,
             validation_data=(X[75:], y[75:]), **QUIET)
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert ha[key] == hb[key]
    _assert_same_params(a, b)
    with pytest.raises(ValueError, match="validation_data or validation_split, not both"):
        fit(a, X, y, epochs=1, learning_rate=0.1, validation_split=0.2, validation_data=(X, y), **QUIET)
    with pytest.raises(ValueError, match="validation_split=0.005 of 100 samples leaves 0 for validation"):
        fit(a, X, y, epochs=1, learning_rate=0.1, validation_split=0.005, **QUIET)
    with pytest.raises(ValueError, match=r"validation_split must be > 0.0 and < 1.0, got 1.0"):
        fit(a, X, y, epochs=1, learning_rate=0.1, validation_split=1.0, **QUIET)


def test_fit_trains_in_training_mode_validates_in_eval_mode_and_ends_in_eval_mode():
    X, y = _data(48)
    net = _net(probe=True)
    probe = net.layers[1]
    net.eval()  # fit switches to training mode itself
    fit(net, X, y, epochs=2, batch_size=16, learning_rate=0.1, validation_data=(X[:10], y[:10]), **QUIET)
    # per epoch: 3 training forwards, then 1 validation forward
    assert probe.seen == [True, True, True, False] * 2
    assert net.training is False and all(layer.training is False for layer in net.layers)

    def explode(pred, yb):
        return float("nan"), np.ones_like(pred)

    net.train()
    with pytest.raises(FloatingPointError):
        fit(net, X, y, epochs=1, batch_size=16, loss=explode, learning_rate=0.1, **QUIET)
    assert net.training is False


def test_resumed_fit_equals_an_uninterrupted_fit_bitwise(tmp_path):
    """Two epochs in one fit, or one epoch, the network saved, the optimizer's and the schedule's state dicts
    saved, everything loaded into new objects and one more epoch: the same parameters, bit for bit."""
    X, y = _data(80)
    kw = dict(batch_size=16, shuffle=False, **QUIET)
    whole = _net()
    opt = AdamW(0.01)
    fit(whole, X, y, epochs=4, optimizer=opt, callbacks=[CosineAnnealingLR(opt, 4)], **kw)

    first = _net()
    opt1 = AdamW(0.01)
    sched1 = CosineAnnealingLR(opt1, 4)
    fit(first, X, y, epochs=2, optimizer=opt1, callbacks=[sched1], **kw)
    path = cnn_ext.save(first, tmp_path / "net")
    opt_state, sched_state = opt1.state_dict(), sched1.state_dict()

    net = cnn_ext.load(path)
    opt2 = AdamW()
    sched2 = CosineAnnealingLR(opt2, 4)
    opt2.load_state_dict(opt_state, net)
    sched2.load_state_dict(sched_state)
    fit(net, X, y, epochs=2, optimizer=opt2, callbacks=[sched2], **kw)
    _assert_same_params(net, whole)
    assert opt2.lr == opt.lr and opt2.steps == opt.steps == 20


def test_checkpoints_from_rank_0_only_and_schedules_on_every_rank(tmp_path):
    from test_distributed_mpi import reports, run_mpi

    body = """
    from cnn_ext.callbacks import ModelCheckpoint
    from cnn_ext.schedules import StepLR
    x, labels = data(40)
    net = build()
    opt = cnn_ext.SGD(0.1, momentum=0.9)
    ckpt = ModelCheckpoint(out + "/ckpt_{epoch}.npz")
    hist = cnn_ext.fit(net, x, labels, epochs=3, batch_size=5, optimizer=opt, seed=0, comm=comm,
                       progress=False, verbose=False, callbacks=[ckpt, StepLR(opt, 1, 0.5)])
    w = np.concatenate([p.ravel() for _, _, p in net.parameters()])
    report(f"{len(ckpt.saved)} {opt.lr} {hist['lr']} {w.tobytes().hex()}")
    """
    proc, _ = run_mpi(tmp_path, body)
    assert proc.returncode == 0, proc.stderr
    rows = [r.split(" ", 2) for r in reports(tmp_path)]
    assert [int(r[0]) for r in rows] == [3, 0]  # rank 0 wrote three files, rank 1 none
    assert rows[0][1:] == rows[1][1:]  # the same learning rates and parameters on both ranks
    assert rows[0][1] == "0.0125" and rows[0][2].startswith("[0.1, 0.05, 0.025]")
    assert sorted(p.name for p in tmp_path.glob("ckpt_*.npz")) == ["ckpt_1.npz", "ckpt_2.npz", "ckpt_3.npz"]


def test_resumed_shuffled_fit_equals_an_uninterrupted_fit_with_the_generator_state():
    """With shuffling, the permutations resume too: fit takes a numpy Generator as seed and continues its stream,
    so saving its bit_generator.state with the optimizer's state dict resumes the same epochs."""
    X, y = _data(80)
    kw = dict(batch_size=16, **QUIET)
    whole = _net()
    fit(whole, X, y, epochs=4, optimizer=SGD(0.05, momentum=0.9), seed=7, **kw)

    first = _net()
    opt = SGD(0.05, momentum=0.9)
    rng = np.random.default_rng(7)
    fit(first, X, y, epochs=2, optimizer=opt, seed=rng, **kw)
    saved_rng, saved_opt, saved_params = rng.bit_generator.state, opt.state_dict(), _params(first)

    net = _net()
    for (_, _, p), q in zip(net.parameters(), saved_params):
        p[...] = q
    opt2 = SGD(0.05)
    opt2.load_state_dict(saved_opt, net)
    rng2 = np.random.default_rng()
    rng2.bit_generator.state = saved_rng
    fit(net, X, y, epochs=2, optimizer=opt2, seed=rng2, **kw)
    _assert_same_params(net, whole)
    other = _net()  # without the generator's state the epochs differ
    for (_, _, p), q in zip(other.parameters(), saved_params):
        p[...] = q
    opt3 = SGD(0.05)
    opt3.load_state_dict(saved_opt, other)
    fit(other, X, y, epochs=2, optimizer=opt3, seed=7, **kw)
    assert not all(np.array_equal(p, q) for p, q in zip(_params(other), _params(whole)))
