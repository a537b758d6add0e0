"""Fixtures shared by the test modules."""
import pytest

import cnn_ext


@pytest.fixture
def restore_threads(monkeypatch):
    """Restores the thread count, and lets even small test cases run on several threads."""
    from cnn_ext import ops

    monkeypatch.setattr(ops, "_MIN_WORK_PER_THREAD", 1)
    previous = cnn_ext.get_num_threads()
    yield
    cnn_ext.set_num_threads(previous)
