"""Shared test setup."""
import pytest


@pytest.fixture(autouse=True)
def _fresh_plans(request):
    """ops keeps each operation's checks and choices per shape (ops._plan), made from its module settings when
    first needed. Tests that change those settings with monkeypatch (tile sizes, work per thread, ...) run
    with the cache off, so every call sees the settings of that moment; the others start from an empty cache
    and exercise it."""
    from cnn_ext import ops

    ops._PLANS.clear() if ops._PLANS is not None else None
    if "monkeypatch" in request.fixturenames:
        request.getfixturevalue("monkeypatch").setattr(ops, "_PLANS", None)
    yield
