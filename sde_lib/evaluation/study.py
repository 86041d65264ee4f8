"""Few-step study: deterministic samplers x time grids (named or calibrated) x NFE budgets on one source.

Every entry starts from the same ``n`` prior draws and is scored by its endpoint error against a tight
float64 probability-flow ODE solve from those draws (``ablation.reference_solve``): median and RMS over
samples of ||x - x_ref||; for trained image models also FD / KID in the data set's classifier features
(``sde_lib.metrics``). Calibrated grids (:func:`~sde_lib.sampling.calibrate`) are fitted on ``n_cal``
*other* prior draws (key ``fold_in(seed key, 1)``; the measured draws use ``fold_in(seed key, 0)``), so
they are measured out of sample; their cost is recorded per entry. ``external`` methods (e.g. another
code base's solvers) run on the same draws and are scored the same way, so comparisons are side by side.

A candidate is a sampler with options, written ``name`` or ``name:key=value,key=value`` (e.g.
``unipc:prediction=noise,variant=bh1``); it is run on every grid of ``grids`` (``TIME_GRIDS`` names, each
passed as an explicit array so one compilation serves all named grids) and, if listed in ``calibrated``,
on its calibrated grid for each objective of ``cal_objectives`` (grid ``calibrated:mean`` etc.).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tqdm.auto import tqdm

from sde_lib.evaluation import ablation
from sde_lib.metrics import evaluate_samples, get_classifier
from sde_lib.sampling import api, registry
from sde_lib.sampling.calibration import OBJECTIVES, calibrate, teacher_solve
from sde_lib.sampling.grids import TIME_GRIDS, time_grid

COLUMNS = ("method", "kind", "sampler", "options", "grid", "budget", "steps", "nfe", "err_median", "err_rms",
           "fd", "fd_err", "kid", "kid_err", "cal_seconds", "cal_nfe", "cal_init", "ts")


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A sampler and its options (``options`` a tuple of (name, value) pairs, hashable)."""

    sampler: str
    options: tuple = ()

    @property
    def label(self) -> str:
        return self.sampler + (":" + ",".join(f"{k}={v}" for k, v in self.options) if self.options else "")

    @property
    def kwargs(self) -> dict:
        return dict(self.options)


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def parse_candidate(text: str) -> Candidate:
    """``name`` or ``name:key=value,...`` -> :class:`Candidate`, validated against the registry."""
    name, _, rest = text.strip().partition(":")
    options = []
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"candidate {text!r}: options are key=value, got {item!r}")
        options.append((key.strip(), _value(value.strip())))
    spec = registry.get(name)
    if spec.is_adaptive or spec.family == "sde":
        raise ValueError(f"candidate {text!r}: only deterministic fixed-step samplers are studied")
    spec.parse_options(dict(options))
    return Candidate(name, tuple(options))


def run_study(source, candidates: Sequence[Candidate], budgets: Sequence[int], *,
              grids: Sequence[str] = TIME_GRIDS, calibrated: Sequence[Candidate] = (), n: int = 1000, seed: int = 0,
              ref_tol: float = 1e-9, n_cal: int = 256, cal_iters: int = 200, cal_lr: float = 0.05,
              cal_objectives: Sequence[str] = ("geometric",),
              external: dict[str, Callable[[jax.Array, int], jax.Array]] | None = None, cache_dir: str | None = None,
              image_metrics: bool = True, progress: bool = True) -> dict:
    """Run the study on ``source`` (an ``ablation.Source``) in float64; returns ``{"rows", "meta"}``.

    ``external[label](x_init, nfe) -> x`` are measured beside ours on the same draws (kind "external").
    ``image_metrics=False`` skips FD / KID of image sources (endpoint errors only).
    """
    bad = [g for g in grids if g not in TIME_GRIDS]
    if bad:
        raise ValueError(f"grids: unknown {bad}; choose from {TIME_GRIDS}")
    bad = [o for o in cal_objectives if o not in OBJECTIVES]
    if bad:
        raise ValueError(f"cal_objectives: unknown {bad}; choose from {OBJECTIVES}")
    sde, eps = source.sde, api.default_eps(source.sde)
    root = jax.random.PRNGKey(seed)
    k_measure, k_cal = jax.random.fold_in(root, 0), jax.random.fold_in(root, 1)
    k_init, k_noise = jax.random.split(k_measure)
    images = _image_metrics(source, n, seed, cache_dir) if image_metrics else (lambda x: {})
    with jax.enable_x64(True):
        x_init = sde.prior_sampling(k_init, (int(n), *source.dims)).astype(jnp.float64)
        ref, ref_nfe = ablation.reference_solve(source, x_init, k_noise, tol=ref_tol, x64=True, eps=eps, denoise=False)
        meta = {"source": source.name, "n": int(n), "seed": seed, "eps": eps, "n_cal": int(n_cal),
                "cal_iters": int(cal_iters), "cal_lr": cal_lr, "cal_objectives": list(cal_objectives),
                "reference": f"ode_adaptive rtol=atol={ref_tol:g} float64", "reference_nfe": ref_nfe,
                **{f"{k}_reference": v for k, v in images(ref).items()}}
        jobs = [(c, b, g) for c in candidates for b in budgets for g in grids] + \
               [(c, b, f"calibrated:{o}") for o in cal_objectives for c in calibrated for b in budgets] + \
               [(label, b, None) for label in (external or {}) for b in budgets]
        teacher = None
        if calibrated:
            start = time.perf_counter()
            teacher = teacher_solve(sde, source.score_fn, k_cal, n_cal, dims=source.dims, eps=eps, tol=ref_tol)
            meta.update(cal_teacher_nfe=teacher.nfe, cal_teacher_seconds=time.perf_counter() - start)
        rows = []
        for what, budget, grid in tqdm(jobs, desc="study", disable=not progress):
            row = {"budget": int(budget)}
            if grid is None:
                x = np.asarray(external[what](x_init, int(budget)))
                row.update(method=what, kind="external", nfe=int(budget))
            else:
                spec = registry.get(what.sampler)
                if int(budget) < registry.min_nfe(what.sampler, **what.kwargs):
                    continue
                steps = registry.steps_for_nfe(what.sampler, int(budget), **what.kwargs)
                row.update(method=f"{what.label}@{grid}", kind="ours", sampler=what.sampler,
                           options=dict(what.options), grid=grid, steps=steps)
                if grid.startswith("calibrated"):
                    cal = calibrate(sde, source.score_fn, what.sampler, int(budget), k_cal, n_cal, dims=source.dims,
                                    iters=cal_iters, lr=cal_lr, objective=grid.split(":")[1], teacher=teacher,
                                    **what.kwargs)
                    ts = cal.ts
                    row.update(cal_seconds=cal.seconds, cal_nfe=cal.n * cal.starts * cal.iters * cal.nfe,
                               cal_init=cal.init, ts=[float(t) for t in ts])
                else:
                    ts = np.asarray(time_grid(sde, grid, steps, eps, float(spec.parse_options(what.kwargs)["rho"])))
                x, info = api.sample(sde, source.score_fn, k_noise, x_init.shape, what.sampler, steps=steps,
                                     x_init=x_init, eps=eps, time_grid=jnp.asarray(ts), **what.kwargs)
                row["nfe"] = int(info["nfe"])
            med, rms = ablation.endpoint_errors(np.asarray(x), ref)
            rows.append({**row, "err_median": med, "err_rms": rms, **images(x)})
    return {"rows": rows, "meta": meta}


def _image_metrics(source, n: int, seed: int, cache_dir: str | None):
    """``x -> {fd, fd_err, kid, kid_err}`` for labelled image sources, ``x -> {}`` otherwise."""
    if source.data_cfg is None:
        return lambda x: {}
    clf = get_classifier(source.data_cfg, cache_dir=cache_dir)

    def compute(x):
        r = evaluate_samples(np.asarray(x, np.float32), source.data_cfg, seed=seed, classifier=clf)
        return {k: r[k] for k in ("fd", "fd_err", "kid", "kid_err", "fd_floor", "kid_floor")}

    return compute


def best_rows(result: dict, kind: str, metric: str = "err_median") -> dict[int, dict]:
    """The row of ``kind`` ("ours" | "external") with the lowest ``metric`` at each budget."""
    best = {}
    for r in result["rows"]:
        if r["kind"] == kind and math.isfinite(r[metric]):
            if r["budget"] not in best or r[metric] < best[r["budget"]][metric]:
                best[r["budget"]] = r
    return best


def sampler_table(result: dict, metric: str = "err_median") -> str:
    """One row per candidate (its best named grid, then each calibration objective) and per external method,
    one column per budget: ``metric`` and, for named grids, the grid that gave it."""
    budgets = sorted({r["budget"] for r in result["rows"]})
    cells: dict[str, dict[int, str]] = {}
    best: dict[tuple[str, int], float] = {}
    for r in result["rows"]:
        name, tag = r["method"], ""
        if r["kind"] == "ours" and not r["grid"].startswith("calibrated"):
            name, tag = r["method"].rsplit("@", 1)[0] + "@best named grid", f" ({r['grid']})"
        if (name, r["budget"]) not in best or r[metric] < best[name, r["budget"]]:
            best[name, r["budget"]] = r[metric]
            cells.setdefault(name, {})[r["budget"]] = _fmt(r[metric]) + tag
    lines = ["| method | " + " | ".join(f"NFE {b}" for b in budgets) + " |", "|" + "---|" * (len(budgets) + 1)]
    lines += [f"| `{name}` | " + " | ".join(row.get(b, "") for b in budgets) + " |" for name, row in cells.items()]
    return "\n".join(lines) + "\n"


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def markdown(result: dict) -> str:
    """Settings, the best of ours against the best external method per budget, then every entry."""
    m = result["meta"]
    head = (f"Source `{m['source']}`, n = {m['n']} shared prior draws (seed {m['seed']}), eps = {m['eps']:g}; "
            f"endpoint error = per-sample L2 to the reference ({m['reference']}, mean NFE {m['reference_nfe']:.0f}). "
            f"Calibrated grids: {m['n_cal']} other draws, {m['cal_iters']} Adam steps (lr {m['cal_lr']:g}) per start, "
            f"objectives {', '.join(m['cal_objectives'])}; their teacher solve: {_fmt(m.get('cal_teacher_nfe'))} NFE "
            f"per draw, {_fmt(m.get('cal_teacher_seconds'))} s; per entry below: optimisation seconds and forward NFE "
            f"(as many VJPs again).\n\n")
    ours, ext = best_rows(result, "ours"), best_rows(result, "external")
    images = any("fd" in r for r in result["rows"])
    metrics = ("err_median", "err_rms") + (("fd", "kid") if images else ())
    names = ["median", "RMS"] + (["FD", "KID"] if images else [])
    cols = ["NFE", "our best", *names, "best external", *names, "external / ours (median)"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for b in sorted(ours):
        o, e = ours[b], ext.get(b)
        cells = [str(b), f"`{o['method']}`"] + [_fmt(o[k]) for k in metrics]
        cells += ([f"`{e['method']}`"] + [_fmt(e[k]) for k in metrics] + [f"{e['err_median'] / o['err_median']:.2f}"]
                  if e else [""] * (len(metrics) + 2))
        lines.append("| " + " | ".join(cells) + " |")
    cols = ["method", "NFE budget", "actual NFE", "err median", "err RMS"] + (["FD", "KID"] if images else [])
    cols += ["calibration s", "calibration NFE"]
    table = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in sorted(result["rows"], key=lambda r: (r["budget"], r["err_median"])):
        cells = [f"`{r['method']}`", str(r["budget"]), str(r["nfe"]), _fmt(r["err_median"]), _fmt(r["err_rms"])]
        if images:
            cells += [f"{_fmt(r['fd'])} ± {_fmt(r['fd_err'])}", f"{_fmt(r['kid'])} ± {_fmt(r['kid_err'])}"]
        cells += [_fmt(r.get("cal_seconds")), _fmt(r.get("cal_nfe"))]
        table.append("| " + " | ".join(cells) + " |")
    return (head + "\n".join(lines) + f"\n\nMedian endpoint error per method:\n\n{sampler_table(result)}\n"
            + "\n".join(table) + "\n")
