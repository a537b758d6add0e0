"""Sphinx configuration of the cnn_ext documentation.

Build (after ``pip install ".[docs]"``, from the repository root)::

    sphinx-build -W --keep-going -b html docs docs/_build/html

autodoc imports the INSTALLED cnn_ext: nothing here puts the checkout on sys.path (its kernels are not compiled
in place after ``pip install .``). The API pages are written at start-up from ``cnn_ext.__all__`` and the public
subpackages' ``__all__``, and the performance pages from ``benchmarks/results/*.json`` (docs/_perfpages.py, with
matplotlib plots of the ratios against PyTorch), so a new public name or a new benchmark result appears without
editing these pages.
"""
import importlib
import inspect
import sys
import warnings
from pathlib import Path

import cnn_ext

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent

sys.path.insert(0, str(DOCS))  # docs/ is not a package: its page writer beside this file
try:
    import _perfpages
finally:
    sys.path.remove(str(DOCS))

project = "cnn_ext"
author = "cnn_ext developers"
copyright = "cnn_ext developers"  # noqa: A001  (Sphinx's name)
release = cnn_ext.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "README.md", "guide.md",  # guide.md: its sections are included by the guide pages
                    "performance/_*"]  # the generated list of performance pages, included by performance.md
templates_path = ["_templates"]
# the benchmark tables jump heading levels (### under ##): they are included as they are written
suppress_warnings = ["myst.header"]
# numpydoc drops a section it does not know ("Shapes") from the page with only a Python warning: make it fail
warnings.filterwarnings("error", category=UserWarning, module="numpydoc.docscrape")
nitpicky = True  # a reference to a name that does not exist is a warning, so -W fails the build
nitpick_ignore_regex = [
    ("py:class", r"cnn_ext\._.*|_.*|cnn_ext(\.\w+)*\._\w+"),  # private bases and helpers
    ("py:class", r"cnn_ext\.layers\.base\.ParamLayer"),  # the internal base of the layers with weights
    ("py:class", r"(cnn_ext\.layers\.base\.)?Gradients"),  # the dict backward returns; not exported
    ("py:mod", r"cnn_ext\.layers"),  # its names are documented where users import them, in cnn_ext
    # no intersphinx (the build must work offline): NumPy's and Python's own names stay text
    ("py:(class|func|obj|meth|data|mod|exc)", r"(numpy|np|os|pathlib|io|json|threadpoolctl|scipy)(\..*)?"),
    ("py:class", r"None\.\s+.*|an? (set-like )?object providing a view on D's \w+"),  # dict's own docstrings (History)
]

autosummary_generate = True
autosummary_imported_members = True
autodoc_default_options = {"members": True}
autodoc_typehints = "none"  # numpydoc's Parameters sections carry the types; signatures stay readable
autodoc_member_order = "bysource"
numpydoc_show_class_members = False
# types in Parameters sections stay text ("ndarray, shape (N, C_in, H, W)"): linking each word breaks on shapes
numpydoc_xref_param_type = False
numpydoc_validation_checks = {"GL08"}  # every public object has a docstring
# __init__ is documented by its class; a layer's protocol methods once, on cnn_ext.Layer
numpydoc_validation_exclude = {r"\.__init__$", r"\.(forward|backward|update|extra_repr|get_config)$",
                               # callbacks' and schedules' hooks and state: documented once, on their base classes
                               r"\.on_(train|epoch|batch)_(begin|end)$", r"\.(step|state_dict|load_state_dict)$"}

myst_enable_extensions = ["colon_fence", "dollarmath"]
myst_heading_anchors = 3

html_theme = "pydata_sphinx_theme"
html_title = f"cnn_ext {release}"
html_theme_options = {
    "github_url": "https://github.com/cnn-ext/cnn_ext",
    "navigation_with_keys": False,
    "show_toc_level": 2,
}
html_static_path = []


# ---- API pages from __all__ --------------------------------------------------------------------------

# (module whose __all__ is documented, page, title, intro)
API_MODULES = [
    ("cnn_ext", "cnn_ext", "cnn_ext", "Everything ``import cnn_ext`` exports, grouped by the module that defines it."),
    ("cnn_ext.datasets", "datasets", "cnn_ext.datasets",
     "Imported explicitly: ``from cnn_ext.datasets import load_mnist, batches``."),
    ("cnn_ext.distributed", "distributed", "cnn_ext.distributed",
     "Imported explicitly (``import cnn_ext.distributed``); needs ``pip install \".[mpi]\"`` or ``\".[dask]\"`` "
     "only when a function is called."),
]
# optional public submodules documented when present (other work may add them)
OPTIONAL_MODULES = ["cnn_ext.optim", "cnn_ext.schedules", "cnn_ext.callbacks", "cnn_ext.augment"]

GROUPS = {  # the defining module of an exported name -> its section title
    "cnn_ext.ops": "Convolution operations",
    "cnn_ext.pooling": "Pooling",
    "cnn_ext.layers": "Layers",
    "cnn_ext.network": "Network",
    "cnn_ext.losses": "Losses and accuracy",
    "cnn_ext.optim": "Optimizers",
    "cnn_ext.schedules": "Learning-rate schedules",
    "cnn_ext.callbacks": "Callbacks",
    "cnn_ext.augment": "Data augmentation",
    "cnn_ext.training": "Training",
    "cnn_ext.serialization": "Saving and loading",
    "cnn_ext.gradcheck": "Gradient checks",
    "cnn_ext._threads": "Threads and configuration",
    "cnn_ext._info": "Threads and configuration",
    "cnn_ext._compat": "Threads and configuration",
    "cnn_ext._memory": "Threads and configuration",
}


def _group(module, name):
    """The section an exported object belongs to, from the module that defines it."""
    obj = getattr(module, name)
    where = getattr(obj, "__module__", None) if (inspect.isclass(obj) or callable(obj)) else None
    if where is None:
        return "Constants"
    for prefix, title in GROUPS.items():
        if where == prefix or where.startswith(prefix + "."):
            return title
    return "Other"


def _autosummary(names, module_name):
    lines = [f".. currentmodule:: {module_name}", "", ".. autosummary::", "   :toctree: generated/", ""]
    lines += [f"   {n}" for n in names]
    return lines + [""]


def _api_pages():
    modules = list(API_MODULES)
    for name in OPTIONAL_MODULES:
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        if getattr(mod, "__all__", None) and any(n not in cnn_ext.__all__ for n in mod.__all__):
            modules.append((name, name.split(".")[-1], name, f"``import {name}``."))
    toc = []
    for module_name, page, title, intro in modules:
        module = importlib.import_module(module_name)
        names = [n for n in module.__all__ if not n.startswith("__")]
        if module_name != "cnn_ext":
            names = [n for n in names if module_name == "cnn_ext.datasets" or n not in cnn_ext.__all__]
        lines = [title, "=" * len(title), "", f".. automodule:: {module_name}", "   :no-members:", "", intro, ""]
        if module_name == "cnn_ext":
            groups = {}
            for n in names:
                groups.setdefault(_group(module, n), []).append(n)
            for section, members in groups.items():
                lines += [section, "-" * len(section), ""] + _autosummary(members, module_name)
        else:
            lines += _autosummary(names, module_name)
        _perfpages.write_if_changed(DOCS / "api" / f"{page}.rst", "\n".join(lines))
        toc.append(page)
    index = ["API reference", "=============", "",
             "Generated from the docstrings of every name in ``__all__``.", "",
             ".. toctree::", "   :maxdepth: 2", ""] + [f"   {p}" for p in toc] + [""]
    _perfpages.write_if_changed(DOCS / "api" / "index.rst", "\n".join(index))


# ---- performance pages from benchmarks/results/*.json (docs/_perfpages.py) ----------------------------------

def _performance_pages():
    _perfpages.write_pages(ROOT / "benchmarks" / "results", DOCS / "performance")


def _public_alias(app, env, node, contnode):
    """Resolve ``cnn_ext.<module>.<name>`` to the documented ``cnn_ext.<name>`` (or ``cnn_ext.datasets.<name>``).

    Docstrings name objects where they are defined (``cnn_ext.losses.softmax_cross_entropy``); the reference
    documents them where users import them.
    """
    target = node.get("reftarget", "")
    if node.get("refdomain") != "py" or not target.startswith("cnn_ext."):
        return None
    parts = target.split(".")
    py = env.domains["py"]
    for i in range(2, len(parts)):
        for public in ("cnn_ext", "cnn_ext.datasets"):
            candidate = ".".join([public] + parts[i:])
            if candidate != target and py.find_obj(env, "", "", candidate, None, 1):
                return py.resolve_xref(env, node["refdoc"], app.builder, node.get("reftype"), candidate, node,
                                       contnode)
    return None


def setup(app):
    app.connect("missing-reference", _public_alias)


_api_pages()
_performance_pages()
