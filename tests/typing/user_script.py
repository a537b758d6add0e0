"""A small typed user program: what mypy (or pyright) sees when it calls cnn_ext.

Not run by pytest: tests/typing/test_types.py runs mypy on it and checks each ``reveal_type`` against the
``# reveals:`` text on its line. `mypy cnn_ext tests/typing/user_script.py` (.ci/run) must pass too.
"""
from __future__ import annotations

import io

import numpy as np
from numpy.typing import NDArray

import cnn_ext
from cnn_ext.datasets import batches, load_mnist_sample, make_shapes, one_hot
from cnn_ext.distributed import allreduce_gradients, batch_powers


def train_step(x: NDArray[np.float32], k: NDArray[np.float32], b: NDArray[np.float32]) -> float:
    y = cnn_ext.conv2d_forward(x, k, b, stride=1, padding="same")
    reveal_type(y)  # reveals: numpy.ndarray[tuple[Any, ...], numpy.dtype[numpy.floating[Any]]]
    dK = cnn_ext.conv2d_kernel_gradient(y, x, padding="same")
    reveal_type(dK)  # reveals: numpy.ndarray[tuple[Any, ...], numpy.dtype[numpy.floating[Any]]]
    dB = cnn_ext.conv2d_bias_gradient(y)
    dX = cnn_ext.conv2d_input_gradient(y, k, padding=((1, 1), (1, 1)))
    reveal_type(cnn_ext.conv2d_output_shape((28, 28), 3, stride=2, padding=1))  # reveals: tuple[int, int]
    pooled = cnn_ext.maxpool2d_forward(y, 2)
    reveal_type(pooled)  # reveals: numpy.ndarray[tuple[Any, ...], numpy.dtype[numpy.floating[Any]]]
    pooled, where = cnn_ext.maxpool2d_forward(y, 2, return_indices=True)
    reveal_type(where)  # reveals: numpy.ndarray[tuple[Any, ...], numpy.dtype[numpy.signedinteger[32Bit]]]
    back = cnn_ext.maxpool2d_backward(pooled, y, 2, indices=where)
    avg = cnn_ext.avgpool2d_backward(cnn_ext.avgpool2d_forward(y, (2, 2)), 2, input_size=y.shape[2:])
    loss, dE_dY = cnn_ext.softmax_cross_entropy(pooled.reshape(len(x), -1), np.zeros(len(x), dtype=np.int64))
    reveal_type(loss)  # reveals: float
    reveal_type(dE_dY)  # reveals: cnn_ext.losses.ExactGradient
    reveal_type(cnn_ext.mse_loss(dX, x))  # reveals: numpy.ndarray[tuple[Any, ...], numpy.dtype[numpy.floating[Any]]]
    return loss + float(dB.sum() + back.sum() + avg.sum()) + cnn_ext.mse(dX, x) + float(dK.mean())


def data() -> int:
    (x_train, y_train), (x_test, y_test) = load_mnist_sample(dtype=np.float32)
    reveal_type(x_train)  # reveals: numpy.ndarray[tuple[Any, ...], numpy.dtype[numpy.floating[Any]]]
    reveal_type(y_test)  # reveals: numpy.ndarray[tuple[Any, ...], numpy.dtype[numpy.signedinteger[64Bit]]]
    xs, ys = batches(x_train, y_train, 32, num_classes=10, shuffle=True, seed=0)
    reveal_type(xs)  # reveals: list[numpy.ndarray[tuple[Any, ...], numpy.dtype[numpy.floating[Any]]]]
    (shapes, _), _ = make_shapes(10, seed=np.random.default_rng(0))
    return len(xs) + len(ys) + len(x_test) + len(shapes) + int(one_hot(y_train, 10).sum())


def save_and_check(net: cnn_ext.Network) -> None:
    buffer = io.BytesIO()
    cnn_ext.save(net, buffer)
    buffer.seek(0)
    reveal_type(cnn_ext.load(buffer))  # reveals: cnn_ext.network.Network
    reveal_type(cnn_ext.get_current_accuracy(net, np.zeros((4, 1, 28, 28)), np.zeros(4, dtype=int)))  # reveals: float
    report = cnn_ext.gradient_check(cnn_ext.Conv2D(1, 2, 3, seed=0), np.ones((2, 1, 5, 5)), raise_on_failure=False)
    reveal_type(report.passed)  # reveals: bool
    reveal_type(cnn_ext.set_num_threads(cnn_ext.get_num_threads()))  # reveals: int
    reveal_type(cnn_ext.show_config(quiet=True))  # reveals: dict[str, Any]


def build_and_train(x: NDArray[np.float32], y: NDArray[np.int64], comm: object) -> float:
    conv = cnn_ext.Conv2D(1, 4, 3, padding="same", init="he_normal", seed=0, dtype=np.float32)
    reveal_type(conv.forward(x))  # reveals: numpy.ndarray[tuple[Any, ...], numpy.dtype[numpy.floating[Any]]]
    reveal_type(conv.backward(np.ones((len(x), 4, 28, 28), np.float32)))  # reveals: cnn_ext.layers.base.Gradients
    reveal_type(conv.k)  # reveals: numpy.ndarray[tuple[Any, ...], numpy.dtype[numpy.floating[Any]]]
    reveal_type(cnn_ext.Dense(10, seed=0).parameters())  # reveals: list[tuple[str, str, numpy.ndarray[tuple[Any, ...], numpy.dtype[numpy.floating[Any]]]]]
    reveal_type(cnn_ext.ReLU().backward(x))  # reveals: dict[str, numpy.ndarray[tuple[Any, ...], numpy.dtype[numpy.floating[Any]]]]
    reveal_type(cnn_ext.BatchNorm2D(4).buffers())  # reveals: list[tuple[str, numpy.ndarray[tuple[Any, ...], numpy.dtype[Any]]]]
    reveal_type(cnn_ext.Residual.basic_block(4, 4, seed=0))  # reveals: cnn_ext.layers.residual.Residual
    reveal_type(cnn_ext.Dropout(0.5, seed=0).forward(x))  # reveals: numpy.ndarray[tuple[Any, ...], numpy.dtype[numpy.floating[Any]]]
    net = cnn_ext.Network([conv, cnn_ext.ReLU(), cnn_ext.MaxPool2D(2), cnn_ext.Flatten(), cnn_ext.Dense(10, seed=0)])
    reveal_type(net.predict(x))  # reveals: numpy.ndarray[tuple[Any, ...], numpy.dtype[numpy.floating[Any]]]
    reveal_type(net(x))  # reveals: numpy.ndarray[tuple[Any, ...], numpy.dtype[numpy.floating[Any]]]
    reveal_type(net.eval())  # reveals: cnn_ext.network.Network
    grads = net.backward(cnn_ext.exact(np.ones((len(x), 10), np.float32)))
    reveal_type(grads)  # reveals: list[dict[str, numpy.ndarray[tuple[Any, ...], numpy.dtype[numpy.floating[Any]]]]]
    reveal_type(net.parameters())  # reveals: list[tuple[str, str, numpy.ndarray[tuple[Any, ...], numpy.dtype[numpy.floating[Any]]]]]
    opt = cnn_ext.Adam(1e-3)
    opt.step(net, grads)
    reveal_type(opt.lr)  # reveals: float
    reveal_type(allreduce_gradients(grads, comm))  # reveals: list[dict[str, numpy.ndarray[tuple[Any, ...], numpy.dtype[numpy.floating[Any]]]]]
    reveal_type(batch_powers(net, x, y))  # reveals: dict[tuple[int, str], int]
    history = cnn_ext.fit(net, x, y, epochs=1, batch_size=2, optimizer=opt, validation_split=0.25, seed=0,
                          callbacks=[cnn_ext.callbacks.EarlyStopping(patience=1)], progress=False, verbose=False)
    reveal_type(history)  # reveals: cnn_ext.callbacks.History
    loss, accuracy = cnn_ext.evaluate(net, x, y)
    reveal_type(accuracy)  # reveals: float | None
    return loss
