"""Batch inference on a Dask cluster: MNIST's test set through a trained network on a LocalCluster.

    pip install "dask[distributed]"         # or: pip install "cnn_ext[dask]"
    CNN_EXT_DATA=../shared/data/mnist python examples/predict_dask.py --network net.npz

--network loads a network saved with cnn_ext.save (e.g. by examples/train_mnist_cnn.py --save net.npz); without
it the tutorial's network is trained for one epoch on the training set first. The test images are sent to the --workers worker
processes (one thread each) in chunks of --chunk images, as if they had read them from storage, and form a dask
array chunked along the batch axis; cnn_ext.distributed.predict_dask scatters the network once to each worker and
runs network.predict on every chunk there.
Printed: the cluster's throughput in images per second (the median of --repeats runs), the same for one
network.predict call in this process, whether the cluster's result is bit for bit that of network.predict on the
same chunks here, and the test accuracy. On one
machine the cluster only shows the mechanism; a cluster of machines (distributed.Client("scheduler:8786")) runs
the same code on data that does not fit one of them.
"""
import argparse
import sys
import time

import numpy as np

import cnn_ext
from cnn_ext.datasets import load_mnist, load_mnist_sample


def load_test_set(data_dir, download):
    try:
        (x_train, y_train), (x_test, y_test) = load_mnist(data_dir, dtype=np.float32, download=download)
        return (x_train, y_train), (x_test, y_test), "MNIST"
    except FileNotFoundError as exc:
        print(f"Full MNIST not available ({exc}); using the MNIST sample shipped with cnn_ext", file=sys.stderr)
        (x_train, y_train), (x_test, y_test) = load_mnist_sample(dtype=np.float32)
        return (x_train, y_train), (x_test, y_test), "the MNIST sample"


def tutorial_network_trained_one_epoch(x_train, y_train):
    """The tutorial's network (examples/train_mnist.py), one epoch of fit with Adam."""
    rng = np.random.default_rng(0)
    kw = dict(rng=rng, dtype=np.float32)
    net = cnn_ext.Network([cnn_ext.Conv2D(1, 4, 5, **kw), cnn_ext.Flatten(), cnn_ext.Dense(2304, 256, **kw),
                           cnn_ext.ReLU(), cnn_ext.Dense(256, 10, **kw)])
    cnn_ext.fit(net, x_train, y_train, epochs=1, batch_size=64, optimizer=cnn_ext.Adam(1e-3), seed=0,
                progress=False, verbose=False)
    return net


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", default=None, help="a network saved with cnn_ext.save")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--no-download", action="store_true")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--chunk", type=int, default=1000, help="images per chunk")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if min(args.workers, args.chunk, args.repeats) < 1:
        parser.error("--workers, --chunk and --repeats must be >= 1")
    try:
        import dask.array as da
        import distributed
    except ImportError:
        parser.exit(1, 'this example needs Dask distributed: pip install "dask[distributed]"\n')
    from cnn_ext.distributed import predict_dask

    (x_train, y_train), (x_test, y_test), title = load_test_set(args.data_dir, not args.no_download)
    if args.network:
        net = cnn_ext.load(args.network)
    else:
        print("No --network: training the tutorial's network for one epoch first", flush=True)
        net = tutorial_network_trained_one_epoch(x_train, y_train)
    x = x_test

    cluster = distributed.LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                                       dashboard_address=None, env={"OMP_NUM_THREADS": "1"})
    try:
        with distributed.Client(cluster, timeout="120s") as client:
            client.wait_for_workers(args.workers, timeout=120)
            # the chunks go to the workers first, as when they read them from storage (and not in the task graph)
            parts = [x[i:i + args.chunk] for i in range(0, len(x), args.chunk)]
            dx = da.concatenate([da.from_delayed(future, shape=part.shape, dtype=part.dtype)
                                 for future, part in zip(client.scatter(parts), parts)])
            cluster_times, local_times = [], []
            for _ in range(args.repeats):  # interleaved, so that both see the same load
                start = time.perf_counter()
                got = client.compute(predict_dask(net, dx, client=client)).result(timeout=600)
                cluster_times.append(time.perf_counter() - start)
                start = time.perf_counter()
                expected = net.predict(x)
                local_times.append(time.perf_counter() - start)
    finally:
        cluster.close(timeout=60)
    n = len(x)
    t_cluster, t_local = np.median(cluster_times), np.median(local_times)
    print(f"{title}: {n} test images, chunks of {args.chunk}, {args.workers} worker processes x 1 thread")
    print(f"predict_dask on the LocalCluster: {n / t_cluster:,.0f} images/s ({t_cluster:.2f} s, median of "
          f"{args.repeats}; the images were on the workers already, the network's scatter is included)")
    print(f"network.predict in this process ({cnn_ext.get_num_threads()} thread(s)): {n / t_local:,.0f} images/s "
          f"({t_local:.2f} s); cluster / local throughput {t_local / t_cluster:.2f}x")
    per_chunk = np.concatenate([net.predict(x[i:i + args.chunk]) for i in range(0, n, args.chunk)])
    print(f"identical to network.predict on the same chunks here: {np.array_equal(got, per_chunk)}; largest "
          f"difference to the one call on all {n} images: {np.max(np.abs(got - expected)):.3g} (a product of "
          f"another batch size may sum in another order)")
    print(f"test accuracy {100 * np.mean(np.argmax(got, axis=1) == y_test):.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
