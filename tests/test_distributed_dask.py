"""Batch inference on Dask: a LocalCluster of 2 worker processes, started and closed by the test with timeouts,
runs a network over a chunked (N, C, H, W) dask array, through ``dask.array.map_blocks`` and through
``cnn_ext.distributed.predict_dask``."""
import sys

import numpy as np
import pytest

from cnn_ext import Conv2D, Dense, Flatten, MaxPool2D, Network, ReLU

dask = pytest.importorskip("dask", reason="dask is not installed (pip install 'dask[distributed]')")
da = pytest.importorskip("dask.array", reason="dask is not installed (pip install 'dask[distributed]')")
distributed = pytest.importorskip("distributed", reason="distributed is not installed (pip install 'dask[distributed]')")

from cnn_ext.distributed import predict_dask  # noqa: E402

TIMEOUT = 120  # seconds for any one wait on the cluster: a loaded CI machine starts worker processes slowly

# - the Active Memory Manager (on by default, every 2 s) drops replicas that no waiting task needs: the copy of the
#   network scattered to each worker vanished from one of them whenever the test ran slower than 2 s, which made
#   the one-copy-per-worker assertion flaky; off, what each worker received stays in its memory;
# - a worker process must connect within distributed.comm.timeouts.connect (30 s by default) or the cluster fails
#   to start, too short on a loaded machine
CLUSTER_CONFIG = {"distributed.scheduler.active-memory-manager.start": False,
                  "distributed.comm.timeouts.connect": f"{TIMEOUT}s", "distributed.comm.timeouts.tcp": f"{TIMEOUT}s"}


def _network():
    rng = np.random.default_rng(0)
    return Network([Conv2D(1, 3, 3, rng=rng), ReLU(), MaxPool2D(2), Flatten(), Dense(3 * 3 * 3, 4, rng=rng)])


@pytest.fixture(scope="module")
def client():
    with dask.config.set(CLUSTER_CONFIG):
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                           dashboard_address=None, env={"OMP_NUM_THREADS": "1"})
        try:
            c = distributed.Client(cluster, timeout=f"{TIMEOUT}s")
            try:
                c.wait_for_workers(2, timeout=TIMEOUT)
                yield c
            finally:
                c.close(timeout=30)
        finally:
            cluster.close(timeout=30)


def test_map_blocks_on_two_workers_equals_one_local_call_bitwise(client):
    """``x.map_blocks(network.predict)`` on the 2-worker cluster == ``network.predict(x)`` in this process, bit
    for bit. Chunks of 16 samples: BLAS sums a row of the Dense product in the same order whatever the number of
    rows only over whole register tiles of rows (an odd-sized chunk changes the last bit of its rows here)."""
    net = _network()
    x = np.random.default_rng(1).standard_normal((64, 1, 8, 8))
    x_before = x.copy()
    dx = da.from_array(x, chunks=(16, 1, 8, 8))
    y = dx.map_blocks(net.predict, dtype=np.float64, drop_axis=(2, 3), chunks=(dx.chunks[0], (4,)))
    assert y.shape == (64, 4) and y.numblocks == (4, 1)
    with distributed.get_task_stream(client) as stream:
        got = client.compute(y).result(timeout=TIMEOUT)
    expected = net.predict(x)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(x, x_before)
    # the chunks ran in the worker processes, not in this one
    ran = [task["worker"] for task in stream.data if str(task["key"][0]).startswith("predict-")]
    assert len(ran) == 4 and set(ran) <= set(client.scheduler_info()["workers"]), stream.data


def test_predict_dask_equals_predict_on_the_whole_array(client):
    net = _network()
    x = np.random.default_rng(1).standard_normal((70, 1, 8, 8))
    dx = da.from_array(x, chunks=(16, 1, 4, 8))  # also split along H: predict_dask rechunks to whole samples
    y = predict_dask(net, dx, client=client, batch_size=5)
    assert y.shape == (70, 4) and y.chunks[0] == dx.chunks[0]
    got = client.compute(y).result(timeout=TIMEOUT)
    # batch_size=5 cuts the chunks into odd-sized forward calls: equal up to the order of BLAS's sums
    np.testing.assert_allclose(got, net.predict(x), rtol=1e-12, atol=1e-12)
    # each worker received the network once (scattered, one copy each) instead of once per chunk in the tasks
    who = client.run(lambda dask_worker: len([k for k in dask_worker.data if "Network" in str(k)]))
    assert sorted(who.values()) == [1, 1], who


def test_predict_dask_needs_a_dask_array(client):
    with pytest.raises(TypeError, match="dask array"):
        predict_dask(_network(), np.zeros((2, 1, 8, 8)), client=client)


def test_without_dask_predict_dask_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "dask.array", None)
    with pytest.raises(ImportError, match=r"pip install \"dask\[distributed\]\""):
        predict_dask(_network(), np.zeros((2, 1, 8, 8)))
