"""Fixtures shared by the test modules."""
import pytest

import cnn_ext


@pytest.fixture(autouse=True)
def _fresh_plans(request):
    """ops keeps each operation's checks and choices per shape (ops._plan), made from its module settings when
    first needed. Tests that change those settings with monkeypatch (tile sizes, work per thread, ...) run
    with the cache off, so every call sees the settings of that moment; the others start from an empty cache
    and exercise it."""
    from cnn_ext import ops

    if ops._PLANS is not None:
        ops._PLANS.clear()
    if "monkeypatch" in request.fixturenames:
        request.getfixturevalue("monkeypatch").setattr(ops, "_PLANS", None)
    yield


@pytest.fixture
def restore_threads(monkeypatch):
    """Restores the thread count, and lets even small test cases run on several threads."""
    from cnn_ext import _threads

    monkeypatch.setattr(_threads, "MIN_WORK_PER_THREAD", 1)
    previous = cnn_ext.get_num_threads()
    yield
    cnn_ext.set_num_threads(previous)
