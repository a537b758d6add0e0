"""Write the MNIST sample shipped in cnn_ext/datasets/data/: the first N digits of the MNIST test set.

Usage: python tools/make_mnist_sample.py [--source DIR] [--count 2000] [--out cnn_ext/datasets/data]

DIR holds the canonical t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz (default $CNN_EXT_DATA or
~/.cache/cnn_ext/mnist). The output is IDX (same header format as the originals) gzipped with mtime 0 and
no file name, so the bytes are reproducible; prints the md5 of the uncompressed content, which
cnn_ext/datasets/_mnist.py checks (_SAMPLE_MD5).
"""
import argparse
import gzip
import hashlib
import io
import struct
from pathlib import Path

import numpy as np

from cnn_ext.datasets import read_idx
from cnn_ext.datasets._mnist import _SAMPLE_IMAGES, _SAMPLE_LABELS, default_data_dir


def idx_bytes(arr):
    """IDX encoding of a uint8 array: 0, 0, 0x08, ndim, sizes as big-endian uint32, then the data."""
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    return struct.pack(f">BBBB{arr.ndim}I", 0, 0, 0x08, arr.ndim, *arr.shape) + arr.tobytes()


def write_gz(path, raw):
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as f:
        f.write(raw)
    path.write_bytes(buf.getvalue())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, default=None)
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "cnn_ext" / "datasets" / "data")
    args = ap.parse_args()
    src = args.source
    if src is None:
        src = default_data_dir()
        src = src / "mnist" if (src / "mnist").is_dir() else src
    images = read_idx(src / "t10k-images-idx3-ubyte.gz")[: args.count]
    labels = read_idx(src / "t10k-labels-idx1-ubyte.gz")[: args.count]
    args.out.mkdir(parents=True, exist_ok=True)
    for name, arr in ((_SAMPLE_IMAGES, images), (_SAMPLE_LABELS, labels)):
        raw = idx_bytes(arr)
        write_gz(args.out / name, raw)
        print(f"{args.out / name}: shape {arr.shape}, {(args.out / name).stat().st_size} bytes, "
              f"content md5 {hashlib.md5(raw).hexdigest()}")
    print("label histogram", np.bincount(labels, minlength=10).tolist())


if __name__ == "__main__":
    main()
