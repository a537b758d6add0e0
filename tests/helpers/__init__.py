"""Shared test helpers: the oracles (tests/helpers/oracles.py) and hypothesis strategies
(tests/helpers/strategies.py) every test module imports. pyproject.toml puts tests/ on sys.path
(``[tool.pytest.ini_options] pythonpath``), so test modules write ``from helpers.oracles import ...``."""
