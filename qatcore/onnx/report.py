"""``calibrate-model --report DIR``: one HTML page a person can look at.

What it shows: the run (model, method, batches, placement preset and why), the warnings
and fallbacks, a bar chart of the output SQNR each quantized layer costs alone (the
sensitivity ranking, worst first), each quantized tensor's histogram with the chosen range
marked (and the share of values it clips), and what was left float and why.  The plots
need matplotlib (``pip install "qatcore[report]"``), imported here and only here.
"""

from __future__ import annotations

import html
import math
from pathlib import Path

import numpy as np

__all__ = ["write_report"]


def _plt():
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError('the report needs matplotlib: pip install "qatcore[report]"') from exc
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    return plt


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)[:80]


def _sensitivity_png(rows, path, plt):
    rows = rows[:40]
    fig, ax = plt.subplots(figsize=(8, 0.22 * len(rows) + 1.2))
    names = [f"{k[:38]} ({op})" for k, op, _ in rows]
    values = [v for _, _, v in rows]
    ax.barh(range(len(rows)), values, color=["#c0392b" if v < 30 else "#2980b9" for v in values])
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("output SQNR (dB) with only this layer quantized (lower = costs more)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _hist_png(name, counts, edges, rng, path, plt, clipped):
    nz = np.flatnonzero(counts)
    if nz.size:
        lo_i, hi_i = max(nz[0] - 2, 0), min(nz[-1] + 3, counts.size)
        counts, edges = counts[lo_i:hi_i], edges[lo_i:hi_i + 1]
    # regroup to at most 200 bars
    k = max(1, math.ceil(counts.size / 200))
    if k > 1:
        n = counts.size // k * k
        counts = counts[:n].reshape(-1, k).sum(1)
        edges = edges[:n + 1:k]
    fig, ax = plt.subplots(figsize=(4.2, 2.2))
    ax.bar(edges[:-1], np.maximum(counts, 0.5), width=np.diff(edges), align="edge",
           color="#7f8c8d", log=True)
    ax.axvline(rng[0], color="#c0392b", lw=1.2)
    ax.axvline(rng[1], color="#c0392b", lw=1.2)
    ax.set_title(f"{name[:48]}\n[{rng[0]:.4g}, {rng[1]:.4g}], {100 * clipped:.3f} % outside",
                 fontsize=7)
    ax.tick_params(labelsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def write_report(result, out_dir, *, max_histograms=120) -> Path:
    """Write ``out_dir/index.html`` (+ PNGs) for a :class:`CalibrationResult` made with
    ``keep_histograms=True`` (and ``sensitivity=True`` for the bar chart).  Returns the
    page's path."""
    plt = _plt()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    e = html.escape
    parts = [f"<html><head><meta charset='utf-8'><title>qatcore calibration: "
             f"{e(Path(result.model).name)}</title><style>body{{font-family:sans-serif;"
             f"margin:1.5em}} img{{margin:2px}} td,th{{padding:2px 8px;text-align:left;"
             f"font-size:90%}}</style></head><body>",
             f"<h1>Calibration of {e(Path(result.model).name)}</h1>",
             f"<p>method <b>{e(result.method)}</b>, {result.batches} batches "
             f"({result.samples} samples), {len(result)} tensors, "
             f"{result.seconds:.2f} s of calibration.</p>"]
    placement = getattr(result, "placement", None)
    if placement is not None:
        parts.append(f"<p>QDQ placement: {e(placement.summary())}.</p>")
    if result.warnings:
        parts.append("<h2>Warnings</h2><ul>" + "".join(f"<li>{e(w)}</li>" for w in result.warnings)
                     + "</ul>")
    if result.fallbacks:
        parts.append("<h2>Fallbacks</h2><table><tr><th>tensor</th><th>why</th></tr>" + "".join(
            f"<tr><td>{e(k)}</td><td>{e(v)}</td></tr>" for k, v in sorted(result.fallbacks.items()))
            + "</table>")
    if result.held:
        parts.append("<h2>Ranges held to what the producing op can output</h2><table>"
                     "<tr><th>tensor</th><th>method's range</th><th>held</th></tr>" + "".join(
                         f"<tr><td>{e(k)}</td><td>[{a[0]:.4g}, {a[1]:.4g}]</td>"
                         f"<td>[{b[0]:.4g}, {b[1]:.4g}]</td></tr>"
                         for k, (a, b) in sorted(result.held.items())) + "</table>")
    rows = getattr(result, "sensitivity", None) or []
    if rows:
        _sensitivity_png(rows, out / "sensitivity.png", plt)
        parts.append("<h2>Per-layer sensitivity</h2><p>Output SQNR against the float model "
                     "with only that layer quantized (its input codes, int8 weights, int32 "
                     "bias), worst first.</p><img src='sensitivity.png'>")
    if result.histograms:
        quantized = list(placement.activations) if placement is not None else list(result)
        order = sorted((n for n in quantized if n in result.histograms),
                       key=lambda n: -result.clipped.get(n, 0.0))[:max_histograms]
        parts.append(f"<h2>Histograms and chosen ranges</h2><p>{len(order)} quantized tensors, "
                     f"most clipped first; red lines: the range written to the QDQ model "
                     f"(log counts).</p><div>")
        for i, name in enumerate(order):
            counts, edges = result.histograms[name]
            png = f"h{i:03d}_{_safe(name)}.png"
            _hist_png(name, counts, edges, result[name], out / png, plt,
                      result.clipped.get(name, 0.0))
            parts.append(f"<img src='{png}' title='{e(name)}'>")
        parts.append("</div>")
    if placement is not None and placement.left_float:
        parts.append("<h2>Left float</h2><table><tr><th>tensor</th><th>why</th></tr>" + "".join(
            f"<tr><td>{e(k)}</td><td>{e(v)}</td></tr>"
            for k, v in sorted(placement.left_float.items())) + "</table>")
    parts.append("</body></html>")
    page = out / "index.html"
    page.write_text("\n".join(parts), encoding="utf-8")
    return page
