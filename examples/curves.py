"""Helpers shared by the MNIST examples: a validation split held out of the training set, and the curves' plot.

The habits they teach: choose (epochs, stopping, hyper-parameters) on a validation split cut from the training
set, look at the test set once at the end, and plot train and validation curves beside the target.
"""
import numpy as np


def hold_out(x, y, n_val, seed):
    """``(x_train, y_train), (x_val, y_val)``: ``n_val`` samples drawn at random (seeded) from the training set."""
    if not 0 < n_val < len(y):
        raise ValueError(f"the validation split must hold between 1 and {len(y) - 1} samples, got {n_val}")
    order = np.random.default_rng(seed).permutation(len(y))
    val, train = order[:n_val], order[n_val:]
    return (x[train], y[train]), (x[val], y[val])


def save_curves(path, history, title, target=None, loss_name="loss"):
    """Write train and validation loss and accuracy per epoch, and the target accuracy as a line, to ``path``.

    ``history`` holds per-epoch lists ``loss``, ``accuracy``, ``val_loss`` and ``val_accuracy`` (what
    :func:`cnn_ext.fit` returns). Returns the labels of the lines drawn, or None without matplotlib.
    """
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        return None
    epochs = np.arange(1, len(history["loss"]) + 1)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, history["loss"], marker="o", label="train")
    ax_loss.plot(epochs, history["val_loss"], marker="o", label="validation")
    ax_loss.set(xlabel="epoch", ylabel=loss_name, title="loss")
    ax_acc.plot(epochs, 100 * np.asarray(history["accuracy"], dtype=float), marker="o", label="train")
    ax_acc.plot(epochs, 100 * np.asarray(history["val_accuracy"]), marker="o", label="validation")
    if target:
        ax_acc.axhline(100 * target, color="tab:red", linestyle="--", label=f"target {100 * target:.1f}%")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    labels = [line.get_label() for ax in (ax_loss, ax_acc) for line in ax.get_lines()]
    plt.close(fig)
    return labels
