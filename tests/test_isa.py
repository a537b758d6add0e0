"""The ISA variants of the twin kernel modules (baseline, AVX2 + FMA, AVX-512): which one import picks from the
CPU's features and CNN_EXT_KERNELS, and that every variant this CPU runs gives the oracle's answer, the same bits
on 1, 2 and 3 threads, and results within tolerance of the other variants.

Each variant runs in its own child process (the choice is made once, at import), started outside the checkout.
A variant the CPU cannot run is skipped with the reason (on CPUs without AVX-512, tools/check_avx512_emulated.sh
runs the AVX-512 variant's code paths in AVX2 instructions).
"""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from helpers.oracles import (
    POOL_TOL,
    einsum_forward,
    einsum_kernel_gradient,
    ref_avg,
    ref_max,
    tap_input_gradient,
    tol,
)
from numpy.testing import assert_allclose

from cnn_ext import _kernels, _methods
from cnn_ext._kernels import ISA_FEATURES, cpu_supports, plan

_OUTSIDE = os.path.dirname(os.path.abspath(sys.executable))
_ALL = set(ISA_FEATURES)
AVX512_CPU = {name: True for name in ISA_FEATURES["avx512"]}
AVX2_CPU = {"AVX2": True, "FMA3": True, "AVX512F": False}
OLD_CPU = {"SSE2": True, "AVX": True}
TWINS = _kernels._TWINS


def _runnable():
    return [isa for isa in ISA_FEATURES if isa == "baseline" or isa in _kernels._built() and cpu_supports(isa)]


def _variant_param(isa):
    if isa == "baseline" or isa in _kernels._built() and cpu_supports(isa):
        return isa
    missing = [name for name in ISA_FEATURES[isa] if not _kernels._cpu_features().get(name)]
    why = f"this CPU lacks {'/'.join(missing)}" if missing else f"the {isa} variant was not built"
    return pytest.param(isa, marks=pytest.mark.skip(reason=why))


VARIANTS = [_variant_param(isa) for isa in ISA_FEATURES]


# ---- the choice, from CPU features (no child process: plan() is what _select() runs at import) --------------

@pytest.mark.parametrize("features, built, choice, level", [
    (AVX512_CPU, _ALL, "auto", "avx512"),
    (AVX512_CPU, _ALL, "", "avx512"),
    (AVX512_CPU, _ALL, "avx2", "avx2"),
    (AVX512_CPU, _ALL, "baseline", "baseline"),
    (AVX512_CPU, {"avx2"}, "auto", "avx2"),            # built with CNN_EXT_NO_AVX512=1
    (AVX512_CPU, {"avx2"}, "avx512", "avx2"),
    (AVX512_CPU, set(), "auto", "baseline"),           # not x86-64
    (dict(AVX512_CPU, AVX512BW=False), _ALL, "auto", "avx2"),  # AVX512F without BW (Xeon Phi): not enough
    (dict(AVX512_CPU, FMA3=False), _ALL, "auto", "baseline"),
    (AVX2_CPU, _ALL, "auto", "avx2"),
    (AVX2_CPU, _ALL, "avx512", "avx2"),                # forced, the CPU lacks it: the next one down
    (OLD_CPU, _ALL, "auto", "baseline"),
    (OLD_CPU, _ALL, "avx512", "baseline"),
    (OLD_CPU, _ALL, "avx2", "baseline"),
    ({}, _ALL, "auto", "baseline"),                    # NumPy without the feature table
])
def test_plan_follows_cpu_features(monkeypatch, features, built, choice, level):
    monkeypatch.setattr(_kernels, "AUTO_KEEPS_AVX2", {})  # the choice as it is once AVX-512 is measured
    got_level, variants = plan(choice, features, built)
    assert got_level == level
    assert variants == {name: level for name in TWINS}


def test_auto_follows_the_measured_table():
    # benchmarks/results/avx512.md: the direct forward kernels (rows, tiled) gain on AVX-512, the others stay
    keep = _kernels.AUTO_KEEPS_AVX2
    assert set(keep) <= set(TWINS) and all(isinstance(why, str) and why for why in keep.values())
    assert plan("auto", AVX512_CPU, _ALL) == ("avx512", {name: "avx2" if name in keep else "avx512" for name in TWINS})
    assert {"rows", "tiled"}.isdisjoint(keep) and "kgrad" in keep
    assert plan("avx512", AVX512_CPU, _ALL) == ("avx512", {name: "avx512" for name in TWINS})


def test_auto_keeps_avx2_where_avx512_loses(monkeypatch):
    monkeypatch.setattr(_kernels, "AUTO_KEEPS_AVX2", {"pooling": "a reason"})
    level, variants = plan("auto", AVX512_CPU, _ALL)
    assert level == "avx512" and variants["pooling"] == "avx2"
    assert all(variants[name] == "avx512" for name in TWINS if name != "pooling")
    # the modules whose methods are chosen from tiled's lanes move together
    monkeypatch.setattr(_kernels, "AUTO_KEEPS_AVX2", {"tiled": "a reason"})
    variants = plan("auto", AVX512_CPU, _ALL)[1]
    assert {name for name in TWINS if variants[name] == "avx2"} == set(_kernels.COUPLED) == {"rows", "tiled"}
    # kgrad's rules read its own lanes: it can stay on AVX2 while the direct forward kernels move up
    monkeypatch.setattr(_kernels, "AUTO_KEEPS_AVX2", {"kgrad": "a reason"})
    variants = plan("auto", AVX512_CPU, _ALL)[1]
    assert {name for name in TWINS if variants[name] == "avx2"} == {"kgrad"}
    # forcing takes the variant for every module; on an AVX2 CPU the table changes nothing
    assert plan("avx512", AVX512_CPU, _ALL)[1] == {name: "avx512" for name in TWINS}
    assert plan("auto", AVX2_CPU, _ALL)[1] == {name: "avx2" for name in TWINS}


# ---- the choice at import, in a child process ------------------------------------------------------------

def _child(code, env_kernels, timeout=600):
    env = dict(os.environ, CNN_EXT_KERNELS=env_kernels)
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=_OUTSIDE, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr
    return done


@pytest.mark.parametrize("choice", ["auto", "baseline", "avx2", "avx512"])
def test_import_picks_and_show_config_names_the_variant(choice):
    done = _child("""
        import json, cnn_ext, cnn_ext._kernels as k
        info = cnn_ext.show_config(quiet=True)
        print(json.dumps(dict(isa=k.ISA, variants=k.VARIANTS, info=info["kernels"], per=info["kernel_variants"],
                              names={n: getattr(k, n).__name__ for n in k._TWINS})))
        cnn_ext.show_config()
    """, choice)
    got = json.loads(done.stdout.splitlines()[0])
    level, variants = plan(choice, _kernels._cpu_features(), _kernels._built())
    assert got["isa"] == got["info"] == level
    assert got["variants"] == got["per"] == variants
    for name, isa in variants.items():
        assert got["names"][name] == f"cnn_ext._kernels.{name}" + ("" if isa == "baseline" else f"_{isa}")
    assert any(line.split()[:2] == ["kernels:", level] for line in done.stdout.splitlines()), done.stdout
    # a forced variant this CPU or build cannot run is said, not silently replaced
    assert ("CNN_EXT_KERNELS" in done.stderr and f"using {level}" in done.stderr) is (choice != "auto" and
                                                                                      level != choice)


# ---- every variant: the oracle's answers, the same bits on any thread count --------------------------------

# (N, C_in, C_out, H, W, KH, KW, stride, padding): shapes for every method, widths that are not a multiple of
# 16 lanes (the AVX-512 tiles' tails), one input channel, one output channel, strided.
CASES = [
    (2, 3, 5, 12, 13, 3, 3, 1, 0),
    (2, 3, 7, 17, 19, 3, 3, 1, 1),
    (2, 1, 4, 28, 28, 5, 5, 1, 0),
    (2, 4, 1, 21, 35, 3, 3, 1, 1),
    (2, 8, 32, 7, 7, 3, 3, 1, 1),
    (2, 16, 64, 14, 14, 3, 3, 1, 1),
    (1, 2, 3, 4, 4, 2, 2, 1, 0),
    (2, 3, 6, 15, 15, 3, 3, 2, 1),
]
POOLS = [((2, 3, 14, 17), 2), ((2, 3, 28, 28), 2), ((2, 2, 15, 33), 3)]

_CHILD = """
import sys
import numpy as np
import cnn_ext
from cnn_ext import _methods
from cnn_ext import (avgpool2d_forward, conv2d_forward, conv2d_input_gradient, conv2d_kernel_gradient,
                     maxpool2d_forward, set_num_threads)

CASES, POOLS, out = {cases!r}, {pools!r}, {{}}
ops = dict(forward=_methods.FORWARD_METHODS, input_gradient=_methods.INPUT_GRADIENT_METHODS,
           kernel_gradient=_methods.KERNEL_GRADIENT_METHODS)


def run(key, call):
    runs = []
    for threads in (1, 2, 3):
        set_num_threads(threads)
        try:
            runs.append(call())
        except ValueError:  # this method cannot run this call
            return
    for t, r in zip((2, 3), runs[1:]):
        if not np.array_equal(r, runs[0]):
            sys.exit(f"{{key}}: {{t}} threads differ from 1 thread")
    out[key] = runs[0]


for c, (N, C_in, C_out, H, W, KH, KW, s, p) in enumerate(CASES):
    for dt in (np.float32, np.float64):
        rng = np.random.default_rng(c)
        x = rng.standard_normal((N, C_in, H, W)).astype(dt)
        k = rng.standard_normal((C_out, C_in, KH, KW)).astype(dt)
        b = rng.standard_normal(C_out).astype(dt)
        y = conv2d_forward(x, k, b, stride=s, padding=p, method="gemm")
        dy = rng.standard_normal(y.shape).astype(dt)
        name = np.dtype(dt).name
        for m in ops["forward"]:
            run(f"{{c}}/{{name}}/forward/{{m}}", lambda: conv2d_forward(x, k, b, stride=s, padding=p, method=m))
        for m in ops["input_gradient"]:
            run(f"{{c}}/{{name}}/input_gradient/{{m}}",
                lambda: conv2d_input_gradient(dy, k, stride=s, padding=p, input_size=(H, W), method=m))
        for m in ops["kernel_gradient"]:
            run(f"{{c}}/{{name}}/kernel_gradient/{{m}}",
                lambda: conv2d_kernel_gradient(dy, x, stride=s, padding=p, kernel_size=(KH, KW), method=m))
for c, (shape, ks) in enumerate(POOLS):
    for dt in (np.float32, np.float64):
        x = np.random.default_rng(100 + c).standard_normal(shape).astype(dt)
        name = np.dtype(dt).name
        run(f"p{{c}}/{{name}}/max", lambda: maxpool2d_forward(x, ks))
        run(f"p{{c}}/{{name}}/avg", lambda: avgpool2d_forward(x, ks))
np.savez(sys.argv[1], **out)
"""


def _results(isa, tmp_path_factory, cache={}):
    """{key: array} of every method on every case in a child process with CNN_EXT_KERNELS=isa (computed once)."""
    if isa not in cache:
        path = tmp_path_factory.mktemp(f"isa_{isa}") / "results.npz"
        code = _CHILD.format(cases=CASES, pools=POOLS)
        env = dict(os.environ, CNN_EXT_KERNELS=isa)
        done = subprocess.run([sys.executable, "-c", code, str(path)], cwd=_OUTSIDE, env=env,
                              capture_output=True, text=True, timeout=1200)
        assert done.returncode == 0, done.stderr
        with np.load(path) as f:
            cache[isa] = {key: f[key] for key in f.files}
    return cache[isa]


def _oracle(key):
    c, name, op = key.split("/")[:3]
    dt = np.dtype(name).type
    if c.startswith("p"):
        shape, ks = POOLS[int(c[1:])]
        x = np.random.default_rng(100 + int(c[1:])).standard_normal(shape).astype(dt).astype(np.float64)
        return (ref_max if op == "max" else ref_avg)(x, ks), tol(dt, POOL_TOL)
    N, C_in, C_out, H, W, KH, KW, s, p = CASES[int(c)]
    rng = np.random.default_rng(int(c))
    x = rng.standard_normal((N, C_in, H, W)).astype(dt).astype(np.float64)
    k = rng.standard_normal((C_out, C_in, KH, KW)).astype(dt).astype(np.float64)
    b = rng.standard_normal(C_out).astype(dt).astype(np.float64)
    pad, stride = (p, p, p, p), (s, s)
    y = einsum_forward(x, k, b, stride, pad)
    dy = rng.standard_normal(y.shape).astype(dt).astype(np.float64)
    if op == "forward":
        ref, scale = y, lambda: einsum_forward(abs(x), abs(k), abs(b), stride, pad)
    elif op == "input_gradient":
        ref, scale = tap_input_gradient(dy, k, H, W, stride, pad), lambda: tap_input_gradient(abs(dy), abs(k), H, W,
                                                                                              stride, pad)
    else:
        ref, scale = einsum_kernel_gradient(dy, x, KH, KW, stride, pad), lambda: einsum_kernel_gradient(
            abs(dy), abs(x), KH, KW, stride, pad)
    t = dict(tol(dt))
    if dt is np.float32 and key.split("/")[3] in ("winograd", "auto"):
        # Winograd's documented error bound, relative to the largest sum of absolute products
        t["atol"] = max(t["atol"], max(_methods.WINOGRAD_ERROR_BOUND.values()) * float(scale().max(initial=0)))
    return ref, t


@pytest.mark.parametrize("isa", VARIANTS)
def test_variant_matches_oracle_on_any_thread_count(isa, tmp_path_factory):
    got = _results(isa, tmp_path_factory)
    # every operation ran on every case with some method (gemm at least), pooling on every case
    for c in range(len(CASES)):
        for op in ("forward", "input_gradient", "kernel_gradient"):
            assert any(key.startswith(f"{c}/float32/{op}/") for key in got), (c, op)
    assert sum(key.startswith("p") for key in got) == 4 * len(POOLS)
    for key, value in got.items():
        ref, kw = _oracle(key)
        assert_allclose(value, ref, err_msg=f"{isa}: {key}", **kw)


@pytest.mark.parametrize("isa", [v for v in VARIANTS if v != "baseline"])
def test_variants_agree_with_baseline(isa, tmp_path_factory):
    got, base = _results(isa, tmp_path_factory), _results("baseline", tmp_path_factory)
    # a method's conditions may depend on the lanes (band, channels): compare where both ran, gemm at least
    common = got.keys() & base.keys()
    assert {key for key in base if key.endswith("/gemm") or key.startswith("p")} <= common
    for key in common:
        dt = got[key].dtype.type
        assert_allclose(got[key], base[key], err_msg=f"{isa} vs baseline: {key}", **tol(dt))
