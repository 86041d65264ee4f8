"""Sampler ablations: a grid of samplers x NFE budgets run on one score source, with quality metrics.

A :class:`Source` is everything an ablation needs from a model: its SDE, ``score_fn(x, t)``, the shape
of one example, and, when the data density is known, exact draws and the true log-density. Sources:
:func:`oracle_source` (a Gaussian mixture's exact score) and :func:`workdir_source` (a trained run's EMA
network; a mixture toy set keeps its exact density, so the oracle metrics apply to trained models too).

Every entry of the grid starts from the same ``n`` prior draws ``x_init`` (and the same noise key) and
is scored by

* endpoint error (deterministic samplers only): per-sample L2 distance ``||x - x_ref||`` to a reference
  probability-flow ODE solve from the same ``x_init`` (adaptive Tsit5, tolerance ``ref_tol``, float64 by
  default); median and root mean square over the samples. For stochastic samplers it is NaN: their
  endpoint depends on the Brownian path, not only on ``x_init``;
* sliced Wasserstein-2 distance to ``n`` exact draws,
  ``SW2(x, y)^2 = mean_p mean_i (sort(x theta_p)_i - sort(y theta_p)_i)^2`` over a fixed set of unit
  directions ``theta_p`` (equal set sizes make the 1-D optimal transport a matching of order statistics);
  its noise floor is the same distance from independent exact sets of size ``n`` to the same reference
  set (mean and std over ``floor_draws`` sets), so a sampler is indistinguishable from exact when its
  distance sits at the floor;
* mean true log-density ``log p_0`` of the samples, next to that of the exact draws;
* for a trained image model (digits, Fashion-MNIST, CIFAR-10): Fréchet distance, KID, precision and
  recall in the feature space of the data set's cached classifier (``sde_lib.metrics``), each with its
  bootstrap error, on ``min(n, size of the real sets)`` samples against the test split; their
  real-vs-real floors go into ``meta``;
* wall time per sample: one warm-up call compiles each (sampler, steps), then one timed call.

Fixed-step samplers get ``steps = steps_for_nfe(name, budget)`` and report the NFE they actually used
(``info["nfe"]``); adaptive ones run once per tolerance (``rtol = atol``) and report their mean NFE.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tqdm.auto import tqdm

from sde_lib import sampling
from sde_lib.data import toy
from sde_lib.evaluation import report
from sde_lib.metrics import evaluate_samples, get_classifier
from sde_lib.metrics.distances import random_directions, sliced_wasserstein_projected
from sde_lib.metrics.reference import LABELLED, image_spec, real_sets
from sde_lib.oracle import GaussianMixture, builtin_mixture
from sde_lib.runs import load_run
from sde_lib.sdes import CLI_NAMES, SDE, sde_class

ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]
SDE_CHOICES = CLI_NAMES
COLUMNS = ("sampler", "family", "budget", "steps", "tol", "nfe", "err_median", "err_rms", "sw2", "logp_mean",
           "fd", "fd_err", "kid", "kid_err", "precision", "recall", "sec_per_sample")
IMAGE_METRICS = ("fd", "kid", "precision", "recall")


@dataclasses.dataclass(frozen=True)
class Source:
    """What an ablation samples from.

    Attributes:
      name: a label for reports.
      sde: the forward SDE the score belongs to.
      score_fn: ``score_fn(x (B, *dims), t (B,)) -> (B, *dims)``.
      dims: shape of one example, e.g. ``(2,)`` or ``(8, 8, 1)``.
      exact_samples: ``exact_samples(key, n) -> (n, *dims)`` draws of the data, or None if unknown.
      log_prob: ``log_prob(x (n, *dims)) -> (n,)`` true data log-density, or None if unknown.
      data_cfg: ``config.data`` of a labelled image data set (classifier-feature metrics), or None.
    """

    name: str
    sde: SDE
    score_fn: ScoreFn
    dims: tuple[int, ...]
    exact_samples: Callable[[jax.Array, int], jax.Array] | None = None
    log_prob: Callable[[jax.Array], jax.Array] | None = None
    data_cfg: object | None = None


# ------------------------------------------------------------------------------------------- sources
def load_mixture(spec: str) -> tuple[str, GaussianMixture]:
    """A built-in mixture by name, or one from a JSON file ``{"means": [[..]], "stds": [..], "weights": [..]}``."""
    if not spec.endswith(".json"):
        return spec, builtin_mixture(spec)
    if not os.path.isfile(spec):
        raise ValueError(f"mixture file {spec!r} not found")
    try:
        with open(spec) as f:
            fields = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read mixture file {spec!r} as JSON: {e}") from None
    missing = [k for k in ("means", "stds", "weights") if not isinstance(fields, dict) or k not in fields]
    if missing:
        raise ValueError(f"mixture file {spec!r} lacks field(s) {missing} (needs means, stds, weights)")
    try:
        gmm = GaussianMixture(fields["means"], fields["stds"], fields["weights"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"mixture file {spec!r}: {e}") from None
    if not (np.all(np.asarray(gmm.stds) > 0) and np.all(np.isfinite(np.asarray(gmm.log_weights)))):
        raise ValueError(f"mixture file {spec!r}: stds must be > 0 and weights >= 0 with a positive sum")
    return os.path.basename(spec), gmm


def oracle_source(mixture: str, sde: str = "vp") -> Source:
    """The exact score of a Gaussian mixture (built-in name or JSON file) under ``sde`` (vp | subvp | ve)."""
    if sde not in SDE_CHOICES:
        raise ValueError(f"sde must be one of {', '.join(SDE_CHOICES)}, got {sde!r}")
    name, gmm = load_mixture(mixture)
    s = sde_class(sde)()
    return Source(f"oracle:{name}/{sde}", s, gmm.score_fn(s), (gmm.dim,), gmm.sample, gmm.log_prob)


def workdir_source(workdir: str, step: int | None = None, params: str = "ema") -> Source:
    """The network of a training run directory (newest checkpoint, or ``step``; EMA or raw parameters).

    A run on a Gaussian-mixture toy set keeps that mixture's exact draws and density; other data leave
    ``exact_samples`` / ``log_prob`` unset (data-space metrics then read NaN). Read-only (``load_run``);
    warns when the run is young for its EMA.
    """
    if not os.path.isdir(workdir):
        raise ValueError(f"workdir {workdir!r} is not a directory")
    run = load_run(workdir, step, params)
    config = run.config
    exact = log_prob = None
    if config.data.dataset == "toy" and config.data.toy_name in ("mixture",) + toy.MIXTURES:
        gmm = toy.toy_density(config.data.toy_name)
        exact, log_prob = gmm.sample, gmm.log_prob
    data_cfg = config.data if config.data.dataset in LABELLED else None
    return Source(f"workdir:{os.path.basename(os.path.normpath(workdir))}@{run.step}", run.sde, run.score_fn,
                  run.dims, exact, log_prob, data_cfg)


# ------------------------------------------------------------------------------------------- metrics
def sliced_w2(x, y, theta: np.ndarray) -> float:
    """Sliced Wasserstein-2 between equal-size sets ``x``, ``y`` ``(n, *dims)`` along ``theta`` ``(D, P)``."""
    flat = lambda a: np.asarray(a, np.float64).reshape(len(a), -1)
    return sliced_wasserstein_projected(flat(x) @ theta, flat(y) @ theta)


def distance_floor(exact_samples: Callable[[jax.Array, int], jax.Array], reference: jax.Array, theta: jax.Array,
                   key: jax.Array, draws: int = 5) -> tuple[float, float]:
    """Mean and std of ``sliced_w2(exact set, reference)`` over ``draws`` independent exact sets of ``len(reference)``.

    The distance an exact sampler would score against the same ``reference``: the level below which a
    sampler's distance says nothing.
    """
    d = [sliced_w2(exact_samples(k, reference.shape[0]), reference, theta) for k in jax.random.split(key, draws)]
    return float(np.mean(d)), float(np.std(d, ddof=1))


def endpoint_errors(x: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """Median and RMS over samples of the per-sample L2 distance ``||x_i - ref_i||``."""
    d = np.linalg.norm((np.asarray(x, np.float64) - ref).reshape(len(ref), -1), axis=1)
    return float(np.median(d)), float(np.sqrt(np.mean(d**2)))


# ------------------------------------------------------------------------------------------- the grid
def is_adaptive(name: str) -> bool:
    return sampling.registry.get(name).is_adaptive


def default_samplers() -> list[str]:
    """Every fixed-step sampler."""
    return [s for s in sampling.available_samplers() if not is_adaptive(s)]


def adaptive_samplers() -> list[str]:
    return [s for s in sampling.available_samplers() if is_adaptive(s)]


@dataclasses.dataclass(frozen=True)
class Plan:
    """One grid entry: a fixed-step sampler at a budget (``steps``), or an adaptive one at ``tol``."""

    sampler: str
    budget: int | None
    steps: int | None
    tol: float | None


def make_plan(samplers: Sequence[str], budgets: Sequence[int], tolerances: Sequence[float]) -> list[Plan]:
    """The grid, validated up front: unknown names, empty lists and too-small budgets raise ValueError."""
    if not samplers:
        raise ValueError("samplers: the list is empty")
    known = sampling.available_samplers()
    for s in samplers:
        if s not in known:
            raise ValueError(f"samplers: unknown sampler {s!r}; available: {', '.join(known)}")
    fixed = [s for s in samplers if not is_adaptive(s)]
    if fixed and not budgets:
        raise ValueError("budgets: the list is empty")
    if any(is_adaptive(s) for s in samplers) and (not tolerances or min(tolerances) <= 0):
        raise ValueError(f"tolerances must be a non-empty list of positive numbers, got {list(tolerances)}")
    plan = []
    for s in samplers:
        if is_adaptive(s):
            plan += [Plan(s, None, None, float(t)) for t in tolerances]
            continue
        for b in budgets:
            if int(b) < sampling.min_nfe(s):
                raise ValueError(f"budgets: NFE budget {b} is below the minimum {sampling.min_nfe(s)} of sampler {s!r}")
            plan.append(Plan(s, int(b), sampling.steps_for_nfe(s, int(b)), None))
    return plan


def reference_solve(source: Source, x_init: jax.Array, key: jax.Array, *, tol: float, x64: bool, eps: float | None,
                    denoise: bool) -> tuple[np.ndarray, float]:
    """The probability-flow ODE from ``x_init`` by adaptive Tsit5 at ``rtol = atol = tol``: (x, mean NFE)."""
    def solve(x0):
        x, info = sampling.sample(source.sde, source.score_fn, key, x0.shape, "ode_adaptive", x_init=x0, eps=eps,
                                  denoise=denoise, rtol=tol, atol=tol, max_steps=1 << 16)
        return np.asarray(x, np.float64), float(np.mean(np.asarray(info["nfe"])))

    if not x64:
        return solve(x_init)
    with jax.enable_x64(True):
        return solve(jnp.asarray(x_init, jnp.float64))


def _timed_sample(source, key, x_init, p: Plan, eps, denoise):
    """Warm-up (compiling) call, then one timed call: (samples, mean NFE, seconds per sample)."""
    opts = {} if p.tol is None else {"rtol": p.tol, "atol": p.tol}

    def call():
        x, info = sampling.sample(source.sde, source.score_fn, key, x_init.shape, p.sampler, steps=p.steps or 1,
                                  x_init=x_init, eps=eps, denoise=denoise, **opts)
        return jax.block_until_ready((x, info["nfe"]))

    call()
    start = time.perf_counter()
    x, nfe = call()
    seconds = time.perf_counter() - start
    return np.asarray(x), float(np.mean(np.asarray(nfe))), seconds / x_init.shape[0]


def run_ablation(source: Source, samplers: Sequence[str] | None = None,
                 budgets: Sequence[int] = (10, 20, 50, 100, 1000), *,
                 tolerances: Sequence[float] = (1e-2, 1e-3, 1e-4), n: int = 2000, seed: int = 0,
                 eps: float | None = None, denoise: bool = False, ref_tol: float = 1e-8, ref_x64: bool = True,
                 num_projections: int = 128, floor_draws: int = 5, progress: bool = True,
                 cache_dir: str | None = None) -> dict:
    """Run ``samplers`` x ``budgets`` (adaptive samplers x ``tolerances``) on ``source``.

    Returns ``{"rows": [dict per entry with COLUMNS], "meta": {...}}``; ``meta`` holds the source, ``n``,
    the reference solve's settings and NFE, the SW2 floor (mean, std), and the exact draws' and the
    reference samples' SW2 and mean log-density; for image sources the metric sample size, classifier
    accuracy and the FD / KID / precision / recall floors. Metrics a source cannot provide are NaN.
    ``cache_dir``: the feature classifier's cache folder (image sources).
    """
    samplers = list(default_samplers() if samplers is None else samplers)
    plan = make_plan(samplers, budgets, tolerances)
    if int(n) < 2:
        raise ValueError(f"n must be >= 2, got {n}")
    if floor_draws < 2:
        raise ValueError(f"floor_draws must be >= 2, got {floor_draws}")
    k_init, k_noise, k_exact, k_floor = jax.random.split(jax.random.PRNGKey(seed), 4)
    shape = (int(n), *source.dims)
    x_init = source.sde.prior_sampling(k_init, shape)
    nan = float("nan")

    theta = exact = None
    meta = {"source": source.name, "n": int(n), "seed": seed,
            "eps": eps if eps is not None else sampling.default_eps(source.sde),
            "denoise": denoise, "num_projections": num_projections, "floor_draws": floor_draws,
            "reference": f"ode_adaptive tsit5 rtol=atol={ref_tol:g} {'float64' if ref_x64 else 'float32'}",
            "sw2_floor": nan, "sw2_floor_std": nan, "logp_exact": nan, "sw2_reference": nan, "logp_reference": nan}
    if source.exact_samples is not None:
        theta = random_directions(math.prod(source.dims), num_projections, seed)
        exact = source.exact_samples(k_exact, int(n))
        mean, std = distance_floor(source.exact_samples, exact, theta, k_floor, floor_draws)
        meta.update(sw2_floor=mean, sw2_floor_std=std)

    def logp(x):
        return float(jnp.mean(source.log_prob(jnp.asarray(x, jnp.float32)))) if source.log_prob else nan

    def sw2(x):
        return sliced_w2(x, exact, theta) if exact is not None else nan

    if source.log_prob is not None and exact is not None:
        meta["logp_exact"] = logp(exact)
    image_metrics = _image_metrics(source, int(n), seed, meta, cache_dir)
    need_ref = any(sampling.sampler_family(p.sampler) != "sde" for p in plan)
    if need_ref:
        ref, ref_nfe = reference_solve(source, x_init, k_noise, tol=ref_tol, x64=ref_x64, eps=eps, denoise=denoise)
        meta.update(reference_nfe=ref_nfe, sw2_reference=sw2(ref), logp_reference=logp(ref))
        if source.data_cfg is not None:
            meta.update({f"{k}_reference": v for k, v in image_metrics(ref).items()})

    rows = []
    bar = tqdm(plan, desc="ablation", disable=not progress)
    for p in bar:
        bar.set_postfix_str(f"{p.sampler} " + (f"nfe<={p.budget}" if p.tol is None else f"tol={p.tol:g}"))
        x, nfe, sec = _timed_sample(source, k_noise, x_init, p, eps, denoise)
        if p.budget is not None and nfe > p.budget + int(denoise):
            raise RuntimeError(f"{p.sampler}: {p.steps} steps used {nfe:g} evaluations, over the budget {p.budget}")
        stochastic = sampling.sampler_family(p.sampler) == "sde"
        med, rms = (nan, nan) if stochastic else endpoint_errors(x, ref)
        rows.append({"sampler": p.sampler, "family": sampling.sampler_family(p.sampler), "budget": p.budget,
                     "steps": p.steps, "tol": p.tol, "nfe": nfe, "err_median": med, "err_rms": rms, "sw2": sw2(x),
                     "logp_mean": logp(x), "sec_per_sample": sec, **image_metrics(x)})
    return {"rows": rows, "meta": meta}


def _image_metrics(source: Source, n: int, seed: int, meta: dict, cache_dir: str | None):
    """``x -> {fd, fd_err, kid, kid_err, precision, recall}`` for image sources (NaNs otherwise).

    Records the metric sample size, the classifier's test accuracy and the real-vs-real floors in ``meta``.
    """
    nan = float("nan")
    if source.data_cfg is None:
        return lambda x: {k: nan for k in ("fd", "fd_err", "kid", "kid_err", "precision", "recall")}
    clf = get_classifier(source.data_cfg, cache_dir=cache_dir)
    sets = real_sets(image_spec(source.data_cfg))
    m = min(n, len(sets.test), len(sets.held))
    meta.update(metric_n=m, dataset=clf.spec.dataset, classifier_accuracy=clf.accuracy)

    def compute(x):
        r = evaluate_samples(np.asarray(x), source.data_cfg, n=m, seed=seed, classifier=clf)
        for k in IMAGE_METRICS:  # the floors depend only on (n, seed): the same for every entry
            meta[f"{k}_floor"], meta[f"{k}_floor_err"] = r[f"{k}_floor"], r[f"{k}_floor_err"]
        return {"fd": r["fd"], "fd_err": r["fd_err"], "kid": r["kid"], "kid_err": r["kid_err"],
                "precision": r["precision"], "recall": r["recall"]}

    return compute


def best_sampler(rows: Sequence[dict], key: str = "err_rms") -> str:
    """The fixed-step sampler of an ablation's ``rows`` with the lowest geometric mean of ``key`` over the
    budgets; only samplers with a finite value at every budget of the grid compete."""
    budgets = {r["budget"] for r in rows if r["budget"] is not None}
    scores = {}
    for name in dict.fromkeys(r["sampler"] for r in rows if r["budget"] is not None):
        vals = [r[key] for r in rows if r["sampler"] == name and r["budget"] is not None]
        if len(vals) == len(budgets) and all(v is not None and math.isfinite(v) and v > 0 for v in vals):
            scores[name] = sum(math.log(v) for v in vals) / len(vals)
    if not scores:
        raise ValueError(f"no fixed-step sampler has a finite {key} at every budget {sorted(budgets)}")
    return min(scores, key=scores.get)


# ------------------------------------------------------------------------------------------- outputs
def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.3g}"
    return str(v)


def markdown(result: dict) -> str:
    """A markdown report: the settings and floors, then one table row per entry."""
    m = result["meta"]
    head = (f"Source `{m['source']}`, n = {m['n']} samples per entry (shared prior draws, seed {m['seed']}), "
            f"eps = {m['eps']:g}, denoise = {m['denoise']}.\n"
            f"Endpoint error: per-sample L2 to the reference ({m['reference']}, mean NFE "
            f"{_fmt(m.get('reference_nfe'))}); blank for stochastic samplers.\n")
    if math.isfinite(m["sw2_floor"]):  # sources with exact draws (oracles, mixture toy runs)
        head += (f"SW2: sliced Wasserstein-2 to {m['n']} exact draws over {m['num_projections']} fixed directions; "
                 f"floor (exact vs exact) {_fmt(m['sw2_floor'])} +- {_fmt(m['sw2_floor_std'])} "
                 f"over {m['floor_draws']} draws; reference samples {_fmt(m['sw2_reference'])}.\n"
                 f"Mean log p0: exact draws {_fmt(m['logp_exact'])}, reference samples {_fmt(m['logp_reference'])}.\n")
    head += "\n"
    images = "dataset" in m
    if images:
        floors = ", ".join(f"{k} {_fmt(m[f'{k}_floor'])} ± {_fmt(m[f'{k}_floor_err'])}" for k in IMAGE_METRICS)
        ref = ", ".join(f"{k} {_fmt(m.get(f'{k}_reference'))}" for k in IMAGE_METRICS)
        head += (f"Image metrics on {m['metric_n']} samples vs the {m['dataset']} test split, in the features of a "
                 f"classifier with test accuracy {m['classifier_accuracy']:.3f}; real-vs-real floors: {floors}; "
                 f"reference samples: {ref}.\n\n")
    cols = ["sampler", "NFE budget", "steps / tol", "actual NFE", "err median", "err RMS"]
    cols += ["FD", "KID", "precision", "recall"] if images else ["SW2", "mean log p0"]
    cols += ["s / sample"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in result["rows"]:
        cells = [r["sampler"], _fmt(r["budget"]), _fmt(r["steps"]) if r["tol"] is None else f"tol {r['tol']:g}",
                 f"{r['nfe']:.4g}", _fmt(r["err_median"]), _fmt(r["err_rms"])]
        if images:
            cells += [f"{_fmt(r['fd'])} ± {_fmt(r['fd_err'])}", f"{_fmt(r['kid'])} ± {_fmt(r['kid_err'])}",
                      _fmt(r["precision"]), _fmt(r["recall"])]
        else:
            cells += [_fmt(r["sw2"]), _fmt(r["logp_mean"])]
        lines.append("| " + " | ".join(cells + [_fmt(r["sec_per_sample"])]) + " |")
    return head + "\n".join(lines) + "\n"


def panels(result: dict) -> list[report.Panel]:
    """Three log-log panels against actual NFE: endpoint RMS error, SW2 or FD (with its floor), time per sample."""
    m = result["meta"]
    images = "dataset" in m
    specs = (("err_rms", "endpoint error (RMS L2)", None),
             ("fd", "Fréchet distance (classifier features)", "fd") if images
             else ("sw2", "sliced W2 to exact draws", "sw2"),
             ("sec_per_sample", "wall time per sample [s]", None))
    names = list(dict.fromkeys(r["sampler"] for r in result["rows"]))
    out = []
    for key, title, floor in specs:
        series = []
        for name in names:
            pts = sorted((r["nfe"], r[key]) for r in result["rows"] if r["sampler"] == name)
            series.append((name, [a for a, _ in pts], [b for _, b in pts], None, "--" if is_adaptive(name) else "-"))
        band = None
        if floor is not None and math.isfinite(m.get(f"{floor}_floor", math.nan)):
            err = m.get(f"{floor}_floor_std", m.get(f"{floor}_floor_err"))
            band = (m[f"{floor}_floor"] - err, m[f"{floor}_floor"] + err)
        out.append(report.Panel(title, "NFE (actual)", series, band, "exact floor", log=True))
    return out


def write_outputs(result: dict, out: str, *, overwrite: bool = False) -> dict[str, str]:
    """Write ``ablation.{csv,md,json,png}`` into ``out`` (the JSON holds ``meta`` and the rows); return the paths."""
    title = f"{result['meta']['source']}, n = {result['meta']['n']}"
    # The legend goes on the distance panel: the only one where stochastic samplers (no endpoint error) appear.
    return report.write_report(out, "ablation", result["rows"], markdown(result), meta=result["meta"],
                               columns=COLUMNS, overwrite=overwrite,
                               plot=lambda path: report.plot_panels(path, panels(result), title, legend_panel=1))
