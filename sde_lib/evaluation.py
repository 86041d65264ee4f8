"""Sample-quality metrics and bits/dim of a training run's checkpoints, against training step.

``evaluate_checkpoints(workdir)`` walks the run's checkpoints (all, or the steps asked for) and, for the
EMA parameters of each, draws ``num`` samples with one sampler from one fixed prior draw (the same seed
at every step, so the curves show the model changing, not the noise) and scores them with
``sde_lib.metrics.evaluate_samples`` (Fréchet distance, KID, precision / recall, sliced Wasserstein,
memorisation, each with its bootstrap error and real-vs-real floor); optionally it adds the test
bits/dim through the probability-flow ODE (``run.model_bpd``). ``write_report`` turns the rows into
``metrics.csv``, ``metrics.json``, ``metrics.md`` and ``metrics.png`` (each metric against step, floor
band shaded).
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from typing import Sequence

import jax
import numpy as np

from sde_lib import checkpoint as ckpt_lib
from sde_lib.metrics import METRICS, evaluate_samples, get_classifier

# Printed and plotted columns; every metric also carries ``_err``, ``_floor`` and ``_floor_err``.
PLOTTED = ("fd", "kid", "precision", "recall", "swd", "memorisation", "bpd")


def checkpoint_steps(workdir: str) -> list[int]:
    """Every step with a committed checkpoint in ``workdir`` (snapshots and preemption copies), ascending."""
    if not os.path.isdir(os.path.join(workdir, ckpt_lib.SNAPSHOTS)) and not os.path.isdir(
            os.path.join(workdir, ckpt_lib.PREEMPTION)):
        raise FileNotFoundError(f"{workdir}: no checkpoints (is it a training workdir?)")
    checkpoints = ckpt_lib.Checkpointer(workdir, async_writes=False)
    try:
        return sorted({s for s, _ in checkpoints.steps()})
    finally:
        checkpoints.close()


def evaluate_checkpoints(workdir: str, steps: Sequence[int] | None = None, *, sampler: str | None = None,
                         sampler_steps: int | None = None, num: int | None = None, bpd: bool = True,
                         bpd_num: int | None = None, seed: int = 0, cache_dir: str | None = None,
                         progress: bool = True) -> list[dict]:
    """One row of metrics per checkpoint step of ``workdir`` (all steps when ``steps`` is None).

    Args:
      sampler, sampler_steps: default ``config.sampling.sampler`` / ``.steps``.
      num: samples per checkpoint (default: as many as the metric's real sets allow, e.g. 360 for digits).
      bpd: also compute bits/dim of the first ``bpd_num`` test examples (default ``config.eval.num_samples``).
      seed: prior draw and metric randomness; identical at every step.
      cache_dir: the feature classifier's cache folder (see ``sde_lib.metrics.classifier``).

    Returns:
      rows: ``step``, ``sampler``, ``steps``, ``nfe``, ``sample_seconds``, the flat dict of
      :func:`sde_lib.metrics.evaluate_samples` and, with ``bpd``, ``bpd``, ``bpd_err``, ``bpd_nfe``.
    """
    from tqdm.auto import tqdm

    from sde_lib import run, training
    from sde_lib.config import get_sde
    from sde_lib.metrics import reference

    available = checkpoint_steps(workdir)
    steps = available if steps is None else [int(s) for s in steps]
    missing = sorted(set(steps) - set(available))
    if missing:
        raise ValueError(f"{workdir}: no checkpoint of step(s) {missing}; available: {available}")
    config = ckpt_lib.read_config(workdir)
    clf = get_classifier(config.data, cache_dir=cache_dir)
    sets = reference.real_sets(reference.image_spec(config.data))
    n_max = min(len(sets.test), len(sets.held))
    num = n_max if num is None else int(num)
    if not 1 <= num <= n_max:
        raise ValueError(f"num must be in 1..{n_max} (the size of the real sets the metrics compare with), got {num}")
    rows = []
    for step in tqdm(steps, desc="checkpoints", unit="ckpt", disable=not progress):
        config, graphdef, ema, step = run.load_ema(workdir, step)
        sde = get_sde(config)
        score_fn = training.score_fn_builder(config, graphdef, sde)(ema)
        start = time.perf_counter()
        x, info = run.draw_samples(config, sde, score_fn, jax.random.PRNGKey(seed), sampler=sampler,
                                   steps=sampler_steps, num=num)
        row = {"step": step, "sampler": sampler or config.sampling.sampler,
               "steps": int(sampler_steps or config.sampling.steps), "nfe": float(np.mean(np.asarray(info["nfe"]))),
               "sample_seconds": time.perf_counter() - start}
        row.update(evaluate_samples(x, config.data, n=num, seed=seed, classifier=clf))
        if bpd:
            r = run.model_bpd(config, sde, score_fn, num=bpd_num, seed=seed)  # the EMA already loaded
            row.update(bpd=r["bpd"], bpd_err=r["bpd_stderr"], bpd_nfe=r["nfe"])
        rows.append(row)
    return rows


def _fmt(row: dict, name: str) -> str:
    v, e = row.get(name), row.get(f"{name}_err")
    if v is None:
        return ""
    digits = 4 if name in ("kid",) else 3
    return f"{v:.{digits}f}" + (f" ± {e:.{digits}f}" if e is not None and math.isfinite(e) else "")


def markdown(rows: list[dict], workdir: str) -> str:
    """Settings line, the floors, then one table row per checkpoint."""
    if not rows:
        return f"No checkpoints evaluated in {workdir}.\n"
    first = rows[0]
    names = [m for m in PLOTTED if m in first]
    floors = ", ".join(f"{m} {_fmt({m: first[f'{m}_floor'], f'{m}_err': first[f'{m}_floor_err']}, m)}"
                       for m in METRICS)
    lines = [f"Run `{workdir}`: {first['n']} samples per checkpoint ({first['sampler']}, {first['steps']} steps, "
             f"{first['nfe']:.0f} NFE) vs the {first['dataset']} test split; classifier test accuracy "
             f"{first['classifier_accuracy']:.3f}.", "",
             f"Real-vs-real floors at this n: {floors}.", "",
             "| step | " + " | ".join(names) + " |", "|---:|" + "---|" * len(names)]
    for r in rows:
        lines.append(f"| {r['step']} | " + " | ".join(_fmt(r, m) for m in names) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: str) -> None:
    """One panel per metric against training step, with error bars and the real-vs-real floor band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [m for m in PLOTTED if rows and m in rows[0]]
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.2), squeeze=False)
    steps = [r["step"] for r in rows]
    for ax, name in zip(axes[0], names):
        ax.errorbar(steps, [r[name] for r in rows], yerr=[r.get(f"{name}_err", 0.0) for r in rows], marker="o", ms=3)
        if f"{name}_floor" in rows[0]:
            lo = min(r[f"{name}_floor"] - r[f"{name}_floor_err"] for r in rows)
            hi = max(r[f"{name}_floor"] + r[f"{name}_floor_err"] for r in rows)
            ax.axhspan(lo, hi, color="grey", alpha=0.3, label="real vs real")
        ax.set(title=name, xlabel="training step")
        ax.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(rows: list[dict], workdir: str, out: str) -> dict[str, str]:
    """Write ``metrics.{csv,json,md,png}`` into ``out``; return their paths."""
    os.makedirs(out, exist_ok=True)
    paths = {k: os.path.join(out, f"metrics.{k}") for k in ("csv", "json", "md", "png")}
    with open(paths["json"], "w") as f:
        json.dump({"workdir": workdir, "rows": rows}, f, indent=2)
    with open(paths["csv"], "w", newline="") as f:
        fields = list(dict.fromkeys(k for r in rows for k in r))
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    with open(paths["md"], "w") as f:
        f.write(markdown(rows, workdir))
    plot(rows, paths["png"])
    return paths
