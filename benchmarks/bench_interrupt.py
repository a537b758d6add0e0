"""How long Ctrl-C takes to stop a long kernel call (issue #17), with and without other CPU-bound processes.

A child process runs one long call (the layer of tests/test_interrupt.py: 509 samples of 64 x 32 x 32, 64 kernels
of 7 x 7, about 7 * 10^10 multiply-adds) of the forward pass, the input gradient or the kernel gradient; one
second in, the parent sends SIGINT and the child notes when the KeyboardInterrupt reaches it. The latency is that
time minus the time the signal was sent, over --tries tries per operation and per load ('busy' = other
``python -c "while True: pass"`` processes, started and stopped by this script).

    python benchmarks/bench_interrupt.py [--busy 0 14] [--tries 3] [--out benchmarks/results/interrupt]
"""
import argparse
import os
import signal
import subprocess
import sys
import time

import _common as C
import _report

OPS = ("forward", "input_gradient", "kernel_gradient")
CHILD = """
import signal, sys, time
import numpy as np
import cnn_ext
signal.signal(signal.SIGINT, signal.default_int_handler)
op, N = sys.argv[1], 509
x = np.random.default_rng(0).standard_normal((N, 64, 32, 32), dtype=np.float32)
k = np.random.default_rng(1).standard_normal((64, 64, 7, 7), dtype=np.float32)
dy = np.random.default_rng(2).standard_normal((N, 64, 26, 26), dtype=np.float32)
calls = {"forward": lambda n: cnn_ext.conv2d_forward(x[:n], k, np.zeros(64, np.float32)),
         "input_gradient": lambda n: cnn_ext.conv2d_input_gradient(dy[:n], k),
         "kernel_gradient": lambda n: cnn_ext.conv2d_kernel_gradient(dy[:n], x[:n])}
calls[op](2)
print("start", flush=True)
try:
    calls[op](N)
    print("finished", flush=True)
except KeyboardInterrupt:
    print("interrupted", time.monotonic(), flush=True)
"""


def latency(op):
    """Seconds from SIGINT to the child's KeyboardInterrupt, or None if the call finished first."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    proc = subprocess.Popen([sys.executable, "-c", CHILD, op], stdout=subprocess.PIPE, text=True, env=env,
                            cwd=os.path.dirname(sys.executable))
    try:
        if proc.stdout.readline().strip() != "start":
            raise RuntimeError(f"{op}: the child did not start")
        time.sleep(1.0)
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    words = out.split()
    return float(words[1]) - sent if words and words[0] == "interrupted" else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--busy", type=int, nargs="+", default=[0, 14])
    ap.add_argument("--tries", type=int, default=3)
    ap.add_argument("--out")
    args = ap.parse_args()
    rows = []
    for busy in args.busy:
        procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
        try:
            time.sleep(2.0 if busy else 0.0)
            load = os.getloadavg()[0]
            for op in OPS:
                times = [latency(op) for _ in range(args.tries)]
                cells = ["finished first" if t is None else f"{t:.3f}" for t in times]
                rows.append([busy, f"{load:.1f}", op, " / ".join(cells),
                             "—" if None in times else f"{max(times):.3f}"])
                print(rows[-1], flush=True)
        finally:
            for p in procs:
                p.kill()
                p.wait()
    result = _report.new_result("Ctrl-C latency of a long kernel call (benchmarks/bench_interrupt.py)", level=1,
                                machine=C.machine_report(), intro=__doc__.split("\n\n")[1].replace("\n", " "))
    _report.add_table(result, None, ["busy processes", "load average at start", "operation",
                                     "latency per try (s)", "worst (s)"], rows)
    C.write_results(result, args.out)


if __name__ == "__main__":
    main()
