"""``qatcore examples DIR``: write the files the README's command examples use.

Everything is made from a fixed seed, so the README's printed figures are what the
commands print on these files (``tests/test_readme_cli.py`` checks it):

* ``acts/``: an activation dump as a calibration run sees one: ``conv1.npy`` and
  ``fc1.npy`` (float32) and ``block2.npz`` holding ``relu`` (float32) and ``attn``
  (float16);
* ``batches/batch_000.npz`` … ``batch_003.npz``: the same two tensors (``relu1``,
  ``logits``) once per batch, for ``calibrate --merge-by-name``;
* ``bad.npy`` (a NaN at position (17, 300)), ``trunc.npy`` (a .npy cut inside its
  header) and ``notes.txt`` (not a tensor file): inputs the command refuses;
* ``fc2.npz``: a :class:`qatcore.QuantizedLinear` (512 → 10) saved with ``.save``.

Only the public API and numpy are used.  Existing files are overwritten; nothing else in
DIR is touched.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from typing import List, Optional, Sequence

import numpy as np

__all__ = ["main", "write_examples"]

SEED = 20261202


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, np.float32(0))


def write_examples(folder: str) -> List[str]:
    """Write the example files into `folder` (created if missing); returns their paths,
    relative to `folder`."""
    from .. import FakeQuantConfig, QuantizedLinear

    rng = np.random.default_rng(SEED)
    f32 = np.float32
    written: List[str] = []

    def path(rel: str) -> str:
        full = os.path.join(folder, rel)
        os.makedirs(os.path.dirname(full) or ".", exist_ok=True)
        written.append(rel)
        return full

    np.save(path("acts/conv1.npy"), _relu(rng.standard_normal((64, 16, 8, 8), dtype=f32)))
    np.save(path("acts/fc1.npy"), rng.standard_normal((64, 512), dtype=f32) * f32(2) + f32(0.5))
    np.savez(path("acts/block2.npz"),
             relu=_relu(rng.standard_normal((64, 32, 4, 4), dtype=f32)),
             attn=rng.standard_normal((64, 8, 8, 8), dtype=f32).astype(np.float16))

    for b in range(4):
        np.savez(path(f"batches/batch_{b:03d}.npz"),
                 relu1=_relu(rng.standard_normal((32, 128), dtype=f32) * f32(1 + b / 4)),
                 logits=rng.standard_normal((32, 10), dtype=f32) * f32(3))

    bad = rng.standard_normal((32, 512), dtype=f32)
    bad[17, 300] = np.nan
    np.save(path("bad.npy"), bad)

    buf = io.BytesIO()
    np.save(buf, rng.standard_normal((8, 8), dtype=f32))
    with open(path("trunc.npy"), "wb") as f:
        f.write(buf.getvalue()[:100])        # magic + version + part of the 118-byte header

    with open(path("notes.txt"), "w", encoding="utf-8") as text:
        text.write("calibration notes: not a tensor file\n")

    w = rng.standard_normal((10, 512), dtype=f32) * f32(0.05)
    bias = rng.standard_normal(10, dtype=f32) * f32(0.1)
    layer = QuantizedLinear.from_float(w, bias, 512, 10, FakeQuantConfig.int8())
    layer.set_input_scale(0.0123)
    layer.save(path("fc2.npz"))
    return written


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``qatcore examples``; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="qatcore examples",
        description="Write the example files of the README's `qatcore` commands (activation "
                    "dumps, per-batch dumps, bad inputs, a saved QuantizedLinear) into DIR.")
    parser.add_argument("folder", metavar="DIR", help="where to write them (created if missing)")
    args = parser.parse_args(argv)
    if os.path.exists(args.folder) and not os.path.isdir(args.folder):
        print(f"qatcore: error: {args.folder}: not a directory", file=sys.stderr)
        return 2
    try:
        files = write_examples(args.folder)
    except OSError as exc:
        print(f"qatcore: error: {args.folder}: cannot write the examples: "
              f"{exc.strerror or exc}", file=sys.stderr)
        return 2
    print(f"qatcore: wrote {len(files)} example files to {args.folder}: "
          + ", ".join(sorted({f.split('/')[0] + ('/' if '/' in f else '') for f in files})))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
