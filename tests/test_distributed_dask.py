"""Batch inference on Dask (cnn_ext.distributed.predict_dask): a LocalCluster of 2 worker processes, started and
closed by the test, runs a network over a chunked dask array."""
import sys

import numpy as np
import pytest

from cnn_ext import Conv2D, Dense, Flatten, MaxPool2D, Network, ReLU

da = pytest.importorskip("dask.array", reason="dask is not installed (pip install 'dask[distributed]')")
distributed = pytest.importorskip("distributed", reason="distributed is not installed (pip install 'dask[distributed]')")

from cnn_ext.distributed import predict_dask  # noqa: E402


def _network():
    rng = np.random.default_rng(0)
    return Network([Conv2D(1, 3, 3, rng=rng), ReLU(), MaxPool2D(2), Flatten(), Dense(3 * 3 * 3, 4, rng=rng)])


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                       env={"OMP_NUM_THREADS": "1"})
    c = distributed.Client(cluster, timeout="60s")
    try:
        c.wait_for_workers(2, timeout=60)
        yield c
    finally:
        c.close(timeout=30)
        cluster.close(timeout=30)


def test_predict_dask_equals_predict_on_the_whole_array(client):
    net = _network()
    x = np.random.default_rng(1).standard_normal((70, 1, 8, 8))
    dx = da.from_array(x, chunks=(16, 1, 4, 8))  # also split along H: predict_dask rechunks to whole samples
    y = predict_dask(net, dx, client=client, batch_size=5)
    assert y.shape == (70, 4) and y.chunks[0] == dx.chunks[0]
    got = y.compute()
    np.testing.assert_allclose(got, net.predict(x), rtol=1e-12, atol=1e-12)
    # both workers took part, and each received the network once (one scattered copy per worker)
    who = client.run(lambda dask_worker: len([k for k in dask_worker.data if "Network" in str(k)]))
    assert sorted(who.values()) == [1, 1], who


def test_predict_dask_needs_a_dask_array(client):
    with pytest.raises(TypeError, match="dask array"):
        predict_dask(_network(), np.zeros((2, 1, 8, 8)), client=client)


def test_without_dask_predict_dask_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "dask.array", None)
    with pytest.raises(ImportError, match=r"pip install \"dask\[distributed\]\""):
        predict_dask(_network(), np.zeros((2, 1, 8, 8)))
