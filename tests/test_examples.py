"""End-to-end training: the tutorial's toy network to 100% under a fixed seed (float64 and float32), and the
tutorial's MNIST network on the MNIST sample shipped in the package, through examples/train_mnist.py."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import cnn_ext
from cnn_ext import Conv2D, Dense, Flatten, Network, ReLU, Sigmoid, get_current_accuracy, mse_loss
from cnn_ext.datasets import batches, load_mnist_sample, make_shapes

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
needs_examples = pytest.mark.skipif(not (EXAMPLES / "train_mnist.py").is_file(),
                                    reason="examples/ is not beside tests/ (wheel tested from a copy of tests/)")


def load_example(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def one_thread():
    """These batches are tiny: one kernel thread and one BLAS thread are fastest, above all on a busy machine
    (threads waiting for a core at every small parallel call made this test ten times slower)."""
    previous = cnn_ext.set_num_threads(1)
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            yield
    finally:
        cnn_ext.set_num_threads(previous)


@needs_examples
def test_train_shapes_example_reaches_100_percent(one_thread):
    net, acc = load_example("train_shapes").train(epochs=50, lr=0.1, seed=0, verbose=False)
    assert acc == 1.0
    assert isinstance(net, Network) and len(net.layers) == 6


def test_toy_training_float32_end_to_end(one_thread):
    """The tutorial's loop, written against the public API only, in float32 throughout."""
    (xtr, ytr), (xte, yte) = make_shapes(seed=1, dtype=np.float32)
    X_train, Y_train = batches(xtr, ytr, 16)
    X_test, Y_test = batches(xte, yte, 16)
    rng = np.random.default_rng(1)
    f32 = dict(rng=rng, dtype=np.float32)
    net = Network([Conv2D(1, 4, 2, **f32), Flatten(), Dense(16, 8, **f32), ReLU(), Dense(8, 4, **f32), Sigmoid()])
    first_acc = get_current_accuracy(net, X_test, Y_test)
    for _ in range(50):
        for x, y in zip(X_train, Y_train):
            out = net.forward(x)
            assert out.dtype == np.float32
            grads = net.backward(mse_loss(out, y))
            net.update(0.1, grads)
    assert all(v.dtype == np.float32 for g in grads for v in g.values())
    assert all(p.dtype == np.float32 for _, _, p in net.parameters())
    assert first_acc < 0.9
    assert get_current_accuracy(net, X_test, Y_test) == 1.0


def tutorial_mnist_network(dtype, seed):
    rng = np.random.default_rng(seed)
    kw = dict(rng=rng, dtype=dtype)
    return Network([Conv2D(1, 4, 5, **kw), Flatten(), Dense(2304, 256, **kw), ReLU(), Dense(256, 128, **kw), ReLU(),
                    Dense(128, 32, **kw), ReLU(), Dense(32, 10, **kw), Sigmoid()])


def test_tutorial_network_learns_the_shipped_mnist_sample(one_thread):
    """The tutorial's MNIST network, batch 16, lr 0.1, MSE, float32, on 1,500 real digits: ~78% after 6 epochs."""
    (xtr, ytr), (xte, yte) = load_mnist_sample(dtype=np.float32)
    net = tutorial_mnist_network(np.float32, seed=0)
    shuffle = np.random.default_rng(1)
    for _ in range(6):
        for x, y in zip(*batches(xtr, ytr, 16, num_classes=10, shuffle=True, seed=shuffle)):
            net.update(0.1, net.backward(mse_loss(net.forward(x), y)))
    assert all(p.dtype == np.float32 for _, _, p in net.parameters())
    assert get_current_accuracy(net, xte, yte) >= 0.70  # chance: 10%


@needs_examples
def test_mnist_example_on_shipped_sample(tmp_path, capsys, monkeypatch):
    """No full dataset reachable (empty --data-dir, no download): the example trains on the sample and says so,
    chooses on a validation split held out of the training set, reports the test set once, and writes its plot
    into the working directory."""
    monkeypatch.delenv("CNN_EXT_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    example = load_example("train_mnist")
    args = example.parse_args(["--data-dir", str(tmp_path / "empty"), "--no-download", "--epochs", "2",
                               "--target", "0.99"])
    threads_before = cnn_ext.get_num_threads()
    result = example.run(args)
    out = capsys.readouterr()
    assert not result["full"]
    assert "Training on the MNIST sample shipped with cnn_ext" in out.out
    assert "train-images-idx3-ubyte.gz" in out.err and str(tmp_path / "empty") in out.err
    assert (result["n_train"], result["n_val"], result["n_test"]) == (1200, 300, 500)  # the sample: 1500 + 500
    history = result["history"]
    assert all(len(v) == 2 for v in history.values()) and "Summary:" in out.out
    assert out.out.count("test accuracy") == 1 and "validation accuracy" in out.out
    assert history["val_accuracy"][-1] >= 0.40           # 2 epochs: ~58% (chance: 10%)
    assert history["loss"][-1] < history["loss"][0]
    assert 0.0 <= result["test_accuracy"] <= 1.0
    assert cnn_ext.get_num_threads() == threads_before  # --threads is restored afterwards
    if importlib.util.find_spec("matplotlib") is None:
        assert result["plot"] is None
    else:
        assert result["plot"] == Path("train_mnist_curves.png")
        assert (tmp_path / "train_mnist_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert result["plot_lines"] == ["train", "validation", "train", "validation", "target 99.0%"]


@needs_examples
def test_validation_split_is_held_out_of_the_training_set():
    hold_out = load_example("curves").hold_out
    x, y = np.arange(40.0).reshape(20, 2), np.arange(20)
    x_before = x.copy()
    (x_train, y_train), (x_val, y_val) = hold_out(x, y, 5, seed=3)
    assert len(y_val) == 5 and len(y_train) == 15
    assert sorted(np.concatenate([y_train, y_val])) == list(range(20)) and not set(y_train) & set(y_val)
    np.testing.assert_array_equal(x_val[:, 0], 2 * y_val)   # samples keep their labels
    np.testing.assert_array_equal(hold_out(x, y, 5, seed=3)[1][1], y_val)  # seeded
    np.testing.assert_array_equal(x, x_before)
    with pytest.raises(ValueError, match="between 1 and 19"):
        hold_out(x, y, 20, seed=0)


@needs_examples
def test_mnist_cnn_example_validates_on_a_held_out_split(tmp_path, capsys, monkeypatch):
    """Trained on the shipped sample (its loader patched in): fit gets the held-out split as validation data,
    never the test set, which is evaluated once at the end; the curves go to --out."""
    example = load_example("train_mnist_cnn")
    (x, y), (x_test, y_test) = load_mnist_sample(dtype=np.float32)
    monkeypatch.setattr(example, "load_data", lambda *a, **k: ((x, y), (x_test, y_test), "MNIST sample"))
    seen = {}

    def fit(net, X, Y, **kwargs):
        seen["train"], seen["validation"] = len(Y), kwargs["validation_data"][0]
        return cnn_ext.fit(net, X, Y, **kwargs)

    monkeypatch.setattr(example, "fit", fit)
    example.main(["--epochs", "1", "--val-size", "300", "--out", str(tmp_path), "--no-progress", "--threads", "1"])
    out = capsys.readouterr().out
    assert seen["train"] == 1200 and len(seen["validation"]) == 300
    training_images = {image.tobytes() for image in x}
    assert all(image.tobytes() in training_images for image in seen["validation"])
    assert out.count("test accuracy") == 1
    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / "train_cnn_mnist_curves.png").is_file()


@needs_examples
@pytest.mark.parametrize("flag", ["--epochs", "--threads", "--batch-size"])
def test_mnist_cnn_example_refuses_counts_below_one(flag, capsys):
    example = load_example("train_mnist_cnn")
    with pytest.raises(SystemExit):  # before any data is read (--epochs 0 ran the default 6 epochs)
        example.main([flag, "0", "--no-download", "--data-dir", "/nonexistent"])
    assert "--epochs, --threads and --batch-size must be >= 1" in capsys.readouterr().err


@needs_examples
def test_mnist_example_exit_code_and_argument_errors(tmp_path, capsys):
    example = load_example("train_mnist")
    argv = ["--data-dir", str(tmp_path), "--no-download", "--epochs", "1", "--plot", str(tmp_path / "c.png")]
    assert example.main(argv + ["--target", "0.999"]) == 1  # target not reached
    assert "Did not reach the 99.9% target in 1 epoch(s)" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        example.parse_args(["--val-size", "0"])
    assert "--val-size must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        example.parse_args(["--epochs", "0"])
    assert "--epochs, --threads and --batch-size must be >= 1" in capsys.readouterr().err
