"""Sample-quality metrics and bits/dim of a training run's checkpoints, against training step.

``evaluate_checkpoints(workdir)`` walks the run's checkpoints (all, or the steps asked for) and, for the
EMA parameters of each (``load_run``), draws ``num`` samples with one sampler from one fixed prior draw
(the same seed at every step, so the curves show the model changing, not the noise) and scores them
with ``sde_lib.metrics.evaluate_samples`` (Fréchet distance, KID, precision / recall, sliced
Wasserstein, memorisation, each with its bootstrap error and real-vs-real floor); optionally it adds the
test bits/dim through the probability-flow ODE (``Run.bpd``). Every checkpoint reuses the first one's
compiled sampler and likelihood solve (the score function is a pytree of the parameters).
``write_report`` turns the rows into ``metrics.{csv,json,md,png}`` (each metric against step, floor
band shaded).
"""

from __future__ import annotations

import math
import time
from typing import Sequence

import jax
import numpy as np

from tqdm.auto import tqdm

from sde_lib.evaluation import report
from sde_lib.metrics import METRICS, evaluate_samples, get_classifier, reference
from sde_lib.runs import RunFolder, checkpoint_steps, load_run

# Printed and plotted columns; every metric also carries ``_err``, ``_floor`` and ``_floor_err``.
PLOTTED = ("fd", "kid", "precision", "recall", "swd", "memorisation", "bpd")


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
    folder = RunFolder(workdir)
    available = checkpoint_steps(folder)
    if not available:
        raise FileNotFoundError(f"{workdir}: no checkpoints (is it a training workdir?)")
    steps = available if steps is None else [int(s) for s in steps]
    missing = sorted(set(steps) - set(available))
    if missing:
        raise ValueError(f"{workdir}: no checkpoint of step(s) {missing}; available: {available}")
    config = folder.read_config()
    clf = get_classifier(config.data, cache_dir=cache_dir)
    sets = reference.real_sets(reference.image_spec(config.data))
    n_max = min(len(sets.test), len(sets.held))
    num = n_max if num is None else int(num)
    if not 1 <= num <= n_max:
        raise ValueError(f"num must be in 1..{n_max} (the size of the real sets the metrics compare with), got {num}")
    if sampler_steps is not None and int(sampler_steps) < 1:
        raise ValueError(f"steps must be >= 1, got {sampler_steps}")
    rows = []
    for step in tqdm(steps, desc="checkpoints", unit="ckpt", disable=not progress):
        run = load_run(workdir, step, warn=False)
        start = time.perf_counter()
        x, info = run.sample(jax.random.PRNGKey(seed), num, sampler, sampler_steps)
        x = np.asarray(x)
        row = {"step": run.step, "sampler": sampler or run.config.sampling.sampler,
               "steps": int(sampler_steps or run.config.sampling.steps), "nfe": float(np.mean(np.asarray(info["nfe"]))),
               "sample_seconds": time.perf_counter() - start}
        row.update(evaluate_samples(x, run.config.data, n=num, seed=seed, classifier=clf))
        if bpd:
            r = run.bpd(num=bpd_num, seed=seed)
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


def panels(rows: list[dict]) -> list[report.Panel]:
    """One panel per metric against training step, with error bars and the real-vs-real floor band."""
    steps = [r["step"] for r in rows]
    out = []
    for name in (m for m in PLOTTED if rows and m in rows[0]):
        band = None
        if f"{name}_floor" in rows[0]:
            band = (min(r[f"{name}_floor"] - r[f"{name}_floor_err"] for r in rows),
                    max(r[f"{name}_floor"] + r[f"{name}_floor_err"] for r in rows))
        series = [("checkpoints", steps, [r[name] for r in rows], [r.get(f"{name}_err") for r in rows], "-")]
        out.append(report.Panel(name, "training step", series, band, "real vs real"))
    return out


def write_report(rows: list[dict], workdir: str, out: str, *, overwrite: bool = False) -> dict[str, str]:
    """Write ``metrics.{csv,json,md,png}`` into ``out``; return their paths."""
    return report.write_report(out, "metrics", rows, markdown(rows, workdir), meta={"workdir": workdir},
                               plot=lambda path: report.plot_panels(path, panels(rows)), overwrite=overwrite)
