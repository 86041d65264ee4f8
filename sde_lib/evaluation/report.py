"""Report files of ablations and evaluations: one writer for CSV + JSON + markdown + PNG panels.

Outputs never overwrite earlier results unless asked: :func:`check_outputs` refuses existing files
(``overwrite=True`` to replace them), so a second ablation into the same folder cannot destroy the first.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
from typing import Sequence


def check_outputs(paths: Sequence[str], overwrite: bool = False) -> None:
    """One ValueError naming the first of ``paths`` that exists (unless ``overwrite``)."""
    if overwrite:
        return
    for p in paths:
        if os.path.exists(p):
            raise ValueError(f"{p} exists; choose another output (--out) or pass --overwrite to replace it")


def write_report(out: str, stem: str, rows: list[dict], markdown: str, *, meta: dict | None = None,
                 columns: Sequence[str] | None = None, plot=None, overwrite: bool = False) -> dict[str, str]:
    """Write ``out/stem.{csv,md,json}`` (and ``stem.png`` by ``plot(path)``); return the paths by extension.

    ``columns``: the CSV columns (default: every key of the rows, in first-seen order); ``meta`` goes to
    the JSON file beside the rows. Refuses to overwrite existing files unless ``overwrite``.
    """
    exts = ("csv", "md", "json") + (("png",) if plot is not None else ())
    paths = {e: os.path.join(out, f"{stem}.{e}") for e in exts}
    check_outputs(list(paths.values()), overwrite)
    os.makedirs(out, exist_ok=True)
    fields = list(columns or dict.fromkeys(k for r in rows for k in r))
    with open(paths["csv"], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows({k: ("" if r.get(k) is None else r.get(k)) for k in fields} for r in rows)
    with open(paths["json"], "w") as f:
        json.dump({"meta": meta or {}, "rows": rows}, f, indent=2)
    with open(paths["md"], "w") as f:
        f.write(markdown)
    if plot is not None:
        plot(paths["png"])
    return paths


@dataclasses.dataclass
class Panel:
    """One plot panel: ``series`` is a list of ``(label, xs, ys, errs or None, linestyle)``; an optional
    horizontal ``band`` (lo, hi), e.g. a metric's real-vs-real floor."""

    title: str
    xlabel: str
    series: list
    band: tuple[float, float] | None = None
    band_label: str = "floor"
    log: bool = False


def plot_panels(path: str, panels: Sequence[Panel], title: str | None = None, legend_panel: int = 0) -> None:
    """Panels side by side, one colour per series label (shared across panels), saved to ``path``."""
    import matplotlib  # lazily: matplotlib's import costs a second; only reports with plots need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(max(3.4 * len(panels), 6), 3.6 if len(panels) > 3 else 5.0),
                             squeeze=False)
    labels = list(dict.fromkeys(s[0] for p in panels for s in p.series))
    cmap = plt.get_cmap("tab10" if len(labels) <= 10 else "tab20")  # tab20 pairs similar shades: few series differ more
    for ax, p in zip(axes[0], panels):
        for label, xs, ys, errs, style in p.series:
            keep = [i for i, y in enumerate(ys) if y is not None and math.isfinite(y) and (y > 0 or not p.log)]
            if not keep:
                continue
            x, y = [xs[i] for i in keep], [ys[i] for i in keep]
            e = None if errs is None else [errs[i] or 0.0 for i in keep]
            ax.errorbar(x, y, yerr=e, fmt=style, marker="o", ms=3, color=cmap(labels.index(label) % cmap.N),
                        label=label)
        if p.band is not None and all(math.isfinite(v) for v in p.band):
            lo, hi = p.band
            ax.axhspan(max(lo, 1e-12) if p.log else lo, hi, color="grey", alpha=0.3, label=p.band_label)
        if p.log:
            ax.set(xscale="log", yscale="log")
        ax.set(title=p.title, xlabel=p.xlabel)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][legend_panel].legend(fontsize=7, ncol=2 if len(labels) > 8 else 1)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
