"""Evaluate a score model: ``--likelihood`` (bits/dim through the PF-ODE, or a variational bound) or ``--metrics``.

``--metrics``: sample-quality metrics (Fréchet distance, KID,
precision / recall in a cached classifier's feature space, sliced Wasserstein, memorisation; each with
its real-vs-real floor) and test bits/dim of one or all checkpoints of a training run, as a table and
a plot against training step (``sde_lib.evaluation.checkpoints``); default ``--out`` out/eval_metrics/<run>:

    .venv/bin/python scripts/evaluate.py --metrics --workdir runs/quickstart [--checkpoints 1000,2500] \
        [--sampler dpm_solver_pp_3m --steps 20] [--num 360] [--no_bpd] [--out DIR]

``--likelihood``, of a trained run (``--workdir DIR``: its EMA parameters, config and test split;
``--split``, ``--n``, ``--n_dequant``, ``--trace`` and ``--seed`` apply): bits/dim of discrete data, or
nats/dim of continuous data (the toy configs, whose exact density is printed beside it):

    .venv/bin/python scripts/evaluate.py --likelihood --workdir runs/quickstart --trace exact

``--method elbo`` reports the variational bound instead of the PF-ODE value (``sde_lib.bounds``): DDPM's
chain bound for a DDPM run (``--decoder discretized``, Ho et al.'s, or ``gaussian``; ``--variance small``
or ``large``), the continuous-time
bound otherwise, with ``--n_dequant`` Monte-Carlo draws per example (at least 2) and its Monte-Carlo error:

    .venv/bin/python scripts/evaluate.py --likelihood --workdir runs/quickstart --method elbo --n_dequant 8

or of a built-in Gaussian mixture's exact score under ``--sde`` (without ``--workdir``):

    .venv/bin/python scripts/evaluate.py --likelihood --mixture gauss16d --data mixture --n 512 \\
        --levels 256 --scale=-3,3 --n_dequant 4 --out out/eval_likelihood

Data: ``--data mixture`` draws ``--n`` points of the same mixture and quantises them to ``--levels`` bins
tiling ``--scale``; ``--data PATH.npz`` reads integer levels 0..levels-1 from the array ``--split``
(default: the file's only array). Writes ``report.json`` and ``report.md`` into ``--out``. Run folders
are only read; existing outputs are kept unless ``--overwrite``. Bad input ends with a one-line error.
"""

from __future__ import annotations

import math
import os
import time

import jax
import numpy as np

from sde_lib import cli
from sde_lib.evaluation import report
from sde_lib import bounds, likelihood as L
from sde_lib.data.scaling import quantize
from sde_lib.oracle import builtin_mixture
from sde_lib.sdes import CLI_NAMES, sde_class

def parse_scale(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--scale must be 'lo,hi' (e.g. 0,1 or -1,1), got {text!r}") from None
    return lo, hi


def load_npz(path: str, split: str | None) -> np.ndarray:
    """The integer array ``split`` of the .npz file at ``path`` (its only array when ``split`` is None)."""
    if not os.path.isfile(path):
        raise ValueError(f"data file {path!r} not found")
    try:
        with np.load(path) as f:
            keys = list(f.keys())
            if split is None and len(keys) != 1:
                raise ValueError(f"{path!r} holds arrays {keys}: choose one with --split")
            name = keys[0] if split is None else split
            if name not in keys:
                raise ValueError(f"--split {name!r} not in {path!r} (arrays: {keys})")
            return f[name]
    except (OSError, EOFError) as e:
        raise ValueError(f"cannot read {path!r} as .npz: {e}") from None


def build(a):
    """(sde, score_fn, integer data, description) from the parsed flags."""
    sde = sde_class(a.sde)()
    gmm = builtin_mixture(a.mixture)
    scale = parse_scale(a.scale)
    if a.data == "mixture":
        if a.n < 1:
            raise ValueError(f"--n must be >= 1, got {a.n}")
        x = gmm.sample(jax.random.PRNGKey(a.seed), a.n)
        data = quantize(np.asarray(x), a.levels, *scale)
        source = f"{a.n} draws of {a.mixture} quantised"
    else:
        data = load_npz(a.data, a.split)
        source = f"{a.data}" + (f"[{a.split}]" if a.split else "")
    if data.ndim < 2 or math.prod(data.shape[1:]) != gmm.dim:
        raise ValueError(f"data of shape {data.shape} do not have {gmm.dim} dimensions per example like {a.mixture}")
    return sde, gmm.score_fn(sde), data, source


def summarise(bpd, info, wall, a, source, n):
    draws = np.asarray(info["bpd_draws"])
    return {
        "model": f"oracle:{a.mixture}", "method": a.method, "sde": a.sde, "data": source, "examples": n,
        "levels": a.levels,
        "scale": parse_scale(a.scale), "offset_bits": L.bpd_offset(a.levels, parse_scale(a.scale)),
        "n_dequant": a.n_dequant, "trace": a.trace, "probe": a.probe, "n_probes": a.n_probes,
        "solver": a.solver, "rtol": a.rtol, "atol": a.atol, "eps": a.eps,
        "bits_per_dim": float(np.mean(bpd)),
        "bits_per_dim_sem": float(np.std(bpd, ddof=1) / math.sqrt(n)) if n > 1 else float("nan"),
        "bits_per_dim_per_draw": draws.mean(axis=1).tolist(),
        "nfe_mean": float(np.mean(np.asarray(info["nfe"]))), "wall_s": wall,
    }


def write_report(fields: dict, out: str, overwrite: bool) -> None:
    rows = "\n".join(f"| {k} | {v} |" for k, v in fields.items())
    report.write_report(out, "report", [fields], f"# Likelihood evaluation\n\n| field | value |\n|---|---|\n{rows}\n",
                        overwrite=overwrite)


def likelihood_of_workdir(a):
    from sde_lib.data import load_split, toy
    from sde_lib.runs import load_run

    if not os.path.isdir(a.workdir):
        raise ValueError(f"workdir {a.workdir!r} not found")
    report.check_outputs([os.path.join(a.out, f"report.{e}") for e in ("csv", "md", "json")], a.overwrite)
    run = load_run(a.workdir)
    fields = run.bpd(split=a.split, num=a.n, n_dequant=a.n_dequant, trace=a.trace, seed=a.seed, method=a.method,
                     decoder=a.decoder, variance=a.variance)
    fields["model"] = f"workdir:{a.workdir}"
    d = run.config.data
    if "nats_per_dim" in fields:
        text = (f"{fields['nats_per_dim']:.4f} +- {fields['nats_per_dim_stderr']:.4f} nats/dim on {fields['num']} "
                f"{fields['split']} examples")
        if d.dataset == "toy" and d.toy_name in ("mixture",) + toy.MIXTURES:  # the data's exact density
            x = load_split(d, fields["split"])[: fields["num"]]
            exact = -np.asarray(toy.toy_density(d.toy_name).log_prob(x)) / x.shape[1]
            fields["exact_nats_per_dim"] = float(np.mean(exact))
            text += f" (the data's exact density: {fields['exact_nats_per_dim']:.4f})"
    else:
        text = f"{fields['bpd']:.4f} +- {fields['bpd_stderr']:.4f} bits/dim on {fields['num']} {fields['split']} examples"
    if a.method == "elbo":
        text = f"bound: {text} (Monte-Carlo error {fields['mc_stderr']:.4f})"
    write_report(fields, a.out, a.overwrite)
    print(f"{text} (step {fields['step']}, mean NFE {fields['nfe']:.0f}); report in {a.out}")


def likelihood(a):
    for name in ("n", "n_dequant", "n_probes", "batch_size"):
        if getattr(a, name) is not None and getattr(a, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(a, name)}")
    if a.workdir:
        return likelihood_of_workdir(a)
    a.n, a.n_dequant = a.n or 512, a.n_dequant or 4
    report.check_outputs([os.path.join(a.out, f"report.{e}") for e in ("csv", "md", "json")], a.overwrite)
    sde, score_fn, data, source = build(a)
    t0 = time.perf_counter()
    if a.method == "elbo":
        if a.n_dequant < 2:
            raise ValueError(f"--method elbo needs --n_dequant >= 2 (its Monte-Carlo error), got {a.n_dequant}")
        bpd, info = bounds.elbo_bits_per_dim(sde, score_fn, data, jax.random.PRNGKey(a.seed + 1), levels=a.levels,
                                             scale=parse_scale(a.scale), n_draws=a.n_dequant, eps=a.eps,
                                             batch_size=a.batch_size, progress=True)
        fields = summarise(np.asarray(bpd), {**info, "nfe": np.full(bpd.shape, a.n_dequant)},
                           time.perf_counter() - t0, a, source, data.shape[0])
        write_report(fields, a.out, a.overwrite)
        print(f"bound: {fields['bits_per_dim']:.4f} +- {fields['bits_per_dim_sem']:.4f} bits/dim; report in {a.out}")
        return
    bpd, info = L.bits_per_dim(sde, score_fn, data, jax.random.PRNGKey(a.seed + 1), levels=a.levels,
                               scale=parse_scale(a.scale), n_dequant=a.n_dequant, batch_size=a.batch_size,
                               progress=True, trace=a.trace, probe=a.probe, n_probes=a.n_probes,
                               rtol=a.rtol, atol=a.atol, eps=a.eps, solver=a.solver)
    fields = summarise(np.asarray(bpd), info, time.perf_counter() - t0, a, source, data.shape[0])
    write_report(fields, a.out, a.overwrite)
    print(f"{fields['bits_per_dim']:.4f} +- {fields['bits_per_dim_sem']:.4f} bits/dim "
          f"(mean NFE {fields['nfe_mean']:.0f}); report in {a.out}")


def metrics(a):
    from sde_lib.evaluation import checkpoints as evaluation
    from sde_lib.runs import checkpoint_steps

    if not os.path.isdir(a.workdir):
        raise ValueError(f"workdir {a.workdir!r} not found")
    out = a.out or os.path.join("out", "eval_metrics", os.path.basename(os.path.normpath(a.workdir)))
    report.check_outputs([os.path.join(out, f"metrics.{e}") for e in ("csv", "md", "json", "png")], a.overwrite)
    if a.checkpoints == "all":
        steps = None
    elif a.checkpoints == "latest":
        steps = checkpoint_steps(a.workdir)[-1:]
    else:
        try:
            steps = [int(v) for v in a.checkpoints.split(",") if v.strip()]
        except ValueError:
            raise ValueError(f"--checkpoints must be 'all', 'latest' or comma-separated steps, got {a.checkpoints!r}") from None
    rows = evaluation.evaluate_checkpoints(a.workdir, steps, sampler=a.sampler, sampler_steps=a.steps, num=a.num,
                                           bpd=not a.no_bpd, bpd_num=a.bpd_num, seed=a.seed, cache_dir=a.cache_dir)
    paths = evaluation.write_report(rows, a.workdir, out, overwrite=a.overwrite)
    print(evaluation.markdown(rows, a.workdir))
    print("wrote " + ", ".join(paths.values()))


def parser():
    p = cli.ArgumentParser(description=__doc__.split("\n")[0])
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--metrics", action="store_true", help="sample metrics and bits/dim of a run's checkpoints")
    mode.add_argument("--likelihood", action="store_true", help="bits/dim through the PF-ODE (a run, or the oracle)")
    p.add_argument("--workdir", default=None, help="a training run directory (--likelihood without it: the oracle)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="default: out/eval_metrics/<run name> or out/eval_likelihood")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    m = p.add_argument_group("--metrics")
    m.add_argument("--checkpoints", default="all", help="'all', 'latest' or comma-separated steps")
    m.add_argument("--sampler", default=None, help="default: the run's config.sampling.sampler")
    m.add_argument("--steps", type=int, default=None, help="sampler steps (default: config.sampling.steps)")
    m.add_argument("--num", type=int, default=None, help="samples per checkpoint (default: the real sets' size)")
    m.add_argument("--no_bpd", action="store_true", help="skip the bits/dim column")
    m.add_argument("--bpd_num", type=int, default=None, help="test examples for bits/dim (default "
                   "config.eval.num_samples)")
    m.add_argument("--cache_dir", default=None, help="feature-classifier cache folder")
    q = p.add_argument_group("--likelihood")
    q.add_argument("--mixture", default="gauss16d", help="built-in mixture of the oracle model")
    q.add_argument("--sde", default="vp", choices=CLI_NAMES)
    q.add_argument("--data", default="mixture", help="'mixture' or a .npz file of integer levels")
    q.add_argument("--split", default=None, help="a run's split, or the array name inside the .npz file")
    q.add_argument("--n", type=int, default=None, help="examples (default: 512 draws of --data mixture; a run's "
                   "config.eval.num_samples)")
    q.add_argument("--levels", type=int, default=256)
    q.add_argument("--scale", default="0,1", help="'lo,hi': the range the levels tile in model space")
    q.add_argument("--n_dequant", type=int, default=None, help="dequantisation draws (default: 4; a run's "
                   "config.eval.bpd_num_repeats)")
    q.add_argument("--method", default="ode", choices=["ode", "elbo"], help="the PF-ODE's bits/dim, or the "
                   "variational bound (DDPM's chain bound for a DDPM run)")
    q.add_argument("--decoder", default="discretized", choices=list(bounds.DECODERS), help="DDPM bound's decoder")
    q.add_argument("--variance", default="small", choices=list(bounds.VARIANCES), help="DDPM bound's reverse "
                   "variances: the posterior's (small, as the ancestral sampler) or beta (large)")
    q.add_argument("--trace", default="hutchinson", choices=list(L.TRACES))
    q.add_argument("--probe", default="rademacher", choices=list(L.PROBES))
    q.add_argument("--n_probes", type=int, default=1)
    q.add_argument("--solver", default="dopri5")
    q.add_argument("--rtol", type=float, default=1e-5)
    q.add_argument("--atol", type=float, default=1e-5)
    q.add_argument("--eps", type=float, default=1e-5)
    q.add_argument("--batch_size", type=int, default=256)
    return p


def main(argv=None):
    a = parser().parse_args(argv)
    with cli.exit_on_user_error():
        if a.metrics:
            if a.workdir is None:
                raise ValueError("--metrics needs --workdir (a training run)")
            metrics(a)
        else:
            a.out = a.out or "out/eval_likelihood"
            likelihood(a)


if __name__ == "__main__":
    main()
