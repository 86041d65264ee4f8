"""Evaluate a score model. Mode ``likelihood``: bits/dim of discrete data through the PF-ODE.

    .venv/bin/python scripts/evaluate.py likelihood --mixture gauss16d --data mixture --n 512 \\
        --levels 256 --scale=-3,3 --n_dequant 4 --out out/eval_likelihood

Model source: ``--model oracle`` (a built-in Gaussian mixture's exact score under ``--sde``), or a
trained run with ``--workdir DIR`` (its EMA parameters, config and test split; ``--split``, ``--n``,
``--n_dequant``, ``--trace`` and ``--seed`` apply):

    .venv/bin/python scripts/evaluate.py likelihood --workdir runs/quickstart --trace exact Data: ``--data mixture`` draws ``--n`` points of
the same mixture and quantises them to ``--levels`` bins tiling ``--scale``; ``--data PATH.npz`` reads
integer levels 0..levels-1 from the array ``--split`` (default: the file's only array). Writes
``report.json`` and ``report.md`` into ``--out``. Bad input ends with a one-line error.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import sde_lib  # noqa: E402
from sde_lib import likelihood as L  # noqa: E402
from sde_lib.oracle import builtin_mixture  # noqa: E402

SDES = {"vp": sde_lib.VPSDE, "subvp": sde_lib.SubVPSDE, "ve": sde_lib.VESDE}


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
    sde = SDES[a.sde]()
    gmm = builtin_mixture(a.mixture)
    scale = parse_scale(a.scale)
    if a.data == "mixture":
        if a.n < 1:
            raise ValueError(f"--n must be >= 1, got {a.n}")
        x = gmm.sample(jax.random.PRNGKey(a.seed), a.n)
        data = np.asarray(L.quantize(x, a.levels, scale))
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
        "model": f"oracle:{a.mixture}", "sde": a.sde, "data": source, "examples": n, "levels": a.levels,
        "scale": parse_scale(a.scale), "offset_bits": L.bpd_offset(a.levels, parse_scale(a.scale)),
        "n_dequant": a.n_dequant, "trace": a.trace, "probe": a.probe, "n_probes": a.n_probes,
        "solver": a.solver, "rtol": a.rtol, "atol": a.atol, "eps": a.eps,
        "bits_per_dim": float(np.mean(bpd)),
        "bits_per_dim_sem": float(np.std(bpd, ddof=1) / math.sqrt(n)) if n > 1 else float("nan"),
        "bits_per_dim_per_draw": draws.mean(axis=1).tolist(),
        "nfe_mean": float(np.mean(np.asarray(info["nfe"]))), "wall_s": wall,
    }


def write_report(report, out):
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(report, f, indent=2)
    rows = "\n".join(f"| {k} | {v} |" for k, v in report.items())
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(f"# Likelihood evaluation\n\n| field | value |\n|---|---|\n{rows}\n")


def likelihood_of_workdir(a):
    from sde_lib import run

    if not os.path.isdir(a.workdir):
        raise ValueError(f"workdir {a.workdir!r} not found")
    report = run.evaluate_bpd(a.workdir, split=a.split, num=a.n if a.n_given else None,
                              n_dequant=a.n_dequant if a.n_dequant_given else None, trace=a.trace, seed=a.seed)
    report["model"] = f"workdir:{a.workdir}"
    write_report(report, a.out)
    print(f"{report['bpd']:.4f} +- {report['bpd_stderr']:.4f} bits/dim on {report['num']} {report['split']} examples "
          f"(step {report['step']}, mean NFE {report['nfe']:.0f}); report in {a.out}")


def likelihood(a):
    if a.workdir:
        return likelihood_of_workdir(a)
    sde, score_fn, data, source = build(a)
    t0 = time.perf_counter()
    bpd, info = L.bits_per_dim(sde, score_fn, data, jax.random.PRNGKey(a.seed + 1), levels=a.levels,
                               scale=parse_scale(a.scale), n_dequant=a.n_dequant, batch_size=a.batch_size,
                               progress=True, trace=a.trace, probe=a.probe, n_probes=a.n_probes,
                               rtol=a.rtol, atol=a.atol, eps=a.eps, solver=a.solver)
    report = summarise(np.asarray(bpd), info, time.perf_counter() - t0, a, source, data.shape[0])
    write_report(report, a.out)
    print(f"{report['bits_per_dim']:.4f} +- {report['bits_per_dim_sem']:.4f} bits/dim "
          f"(mean NFE {report['nfe_mean']:.0f}); report in {a.out}")


def parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="mode", required=True)
    q = sub.add_parser("likelihood", help="bits/dim of discrete data through the PF-ODE")
    q.add_argument("--model", default="oracle", choices=["oracle"], help="score source without --workdir")
    q.add_argument("--workdir", default=None, help="a training run directory: evaluate its EMA model")
    q.add_argument("--mixture", default="gauss16d", help="built-in mixture of the oracle model")
    q.add_argument("--sde", default="vp", choices=sorted(SDES))
    q.add_argument("--data", default="mixture", help="'mixture' or a .npz file of integer levels")
    q.add_argument("--split", default=None, help="array name inside the .npz file")
    q.add_argument("--n", type=int, default=512, help="examples drawn for --data mixture")
    q.add_argument("--levels", type=int, default=256)
    q.add_argument("--scale", default="0,1", help="'lo,hi': the range the levels tile in model space")
    q.add_argument("--n_dequant", type=int, default=4)
    q.add_argument("--trace", default="hutchinson", choices=list(L.TRACES))
    q.add_argument("--probe", default="rademacher", choices=list(L.PROBES))
    q.add_argument("--n_probes", type=int, default=1)
    q.add_argument("--solver", default="dopri5")
    q.add_argument("--rtol", type=float, default=1e-5)
    q.add_argument("--atol", type=float, default=1e-5)
    q.add_argument("--eps", type=float, default=1e-5)
    q.add_argument("--batch_size", type=int, default=256)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--out", default="out/eval_likelihood")
    return p


def main(argv=None):
    a = parser().parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    a.n_given = any(x.startswith("--n=") or x == "--n" for x in argv)
    a.n_dequant_given = any(x.startswith("--n_dequant") for x in argv)
    try:
        {"likelihood": likelihood}[a.mode](a)
    except ValueError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
