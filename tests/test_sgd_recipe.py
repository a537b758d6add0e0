"""A PyTorch recipe (SGD, lr 0.05, momentum 0.9, weight decay 5e-4, batch 64) on the shipped MNIST sample: the
exact rule gives what the old code gave only with hand-rescaled gradients (dK, dB and Dense dB times N).

Run as a script to print the three accuracies: ``python tests/test_sgd_recipe.py [epochs]``.
"""
import sys

import numpy as np

from cnn_ext import Conv2D, Dense, Flatten, MaxPool2D, Network, ReLU, get_current_accuracy, softmax_cross_entropy
from cnn_ext.datasets import load_mnist_sample
from cnn_ext.optim import SGD

RECIPE = dict(lr=0.05, momentum=0.9, weight_decay=5e-4)
BATCH = 64


def _network():
    return Network([Conv2D(1, 8, 3, init="he_normal", seed=0, dtype=np.float32), ReLU(), MaxPool2D(2), Flatten(),
                    Dense(8 * 13 * 13, 10, init="glorot_uniform", seed=1, dtype=np.float32)])


def train(mode, epochs=3, seed=0):
    """Test accuracy after ``epochs``; mode 'exact' (the rule), 'rescaled' (the old code's tutorial-rule
    gradients times N by hand where they are batch means) or 'old' (the old code's gradients as they were)."""
    (xtr, ytr), (xte, yte) = load_mnist_sample(dtype=np.float32)
    net, opt = _network(), SGD(**RECIPE)
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = rng.permutation(xtr.shape[0])
        for i in range(0, len(order), BATCH):
            idx = order[i:i + BATCH]
            _, dy = softmax_cross_entropy(net.forward(xtr[idx]), ytr[idx])
            if mode == "exact":
                grads = net.backward(dy)
            else:
                grads = [dict(g) for g in net.backward(np.asarray(dy))]  # plain dE_dY: the old numbers
                if mode == "rescaled":
                    n = np.float32(len(idx))
                    for layer, g in zip(net.layers, grads):
                        for key in {"Conv2D": ("dK", "dB"), "Dense": ("dB",)}.get(type(layer).__name__, ()):
                            g[key] = g[key] * n
            opt.step(net, grads)
    return get_current_accuracy(net, xte, yte)


def test_exact_rule_equals_hand_rescaled_old_gradients():
    exact_acc, rescaled_acc = train("exact", epochs=2), train("rescaled", epochs=2)
    assert abs(exact_acc - rescaled_acc) <= 0.005  # the same steps up to float32 rounding
    assert exact_acc > 0.8


if __name__ == "__main__":
    epochs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    for mode in ("exact", "rescaled", "old"):
        print(f"{mode:>9}: {100 * train(mode, epochs):.2f} % after {epochs} epochs", flush=True)
