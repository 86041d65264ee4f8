"""One round of reflow (rectified flow, Liu et al. 2023): couple prior draws with a trained run's ODE outputs,
then train a new run on the pairs; prints the straightness of both models' paths.

    python scripts/reflow.py --workdir=runs/digits_flow --out_workdir=runs/digits_reflow \
        --pairs=out/reflow/digits_flow_pairs.npz [--num_pairs=20000] [--n_iters=5000] [--init=fork]

1. Reads --workdir (read-only): its newest checkpoint's EMA network.
2. Pairs: --num_pairs standard normal draws z_i and x_i = the probability-flow solve from prior_std z_i
   (--sampler, default ode_adaptive at --tol) down to the config's eps, written to --pairs (.npz with x,
   noise; an existing file is refused unless --overwrite, or used as it is with --reuse_pairs).
3. Trains --out_workdir with the run's own config and config.data.pairs = --pairs for --n_iters updates:
   --init=fork starts from the run's checkpoint (parameters, EMA and optimiser; Liu et al. initialise the
   2-rectified flow from the 1-rectified one), --init=scratch from new parameters. The run folder rules of
   scripts/train.py hold: a folder that holds a run is refused.
4. Prints a JSON line: the pairs' cost and both models' straightness and length ratio
   (``sde_lib.reflow.straightness``, on --num_straight other draws).

With --measure_only it prints the straightness of --workdir alone (any unconditional data-space run, e.g. a
VP model to compare with): no pairs, no training, and --out_workdir / --pairs are not needed.
"""

from __future__ import annotations

import json
import os
import time

import jax

from sde_lib import cli, reflow
from sde_lib.data.pairs import read_pairs, write_pairs
from sde_lib.runs import load_run, trainer


def parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True, help="the trained run to rectify (read only)")
    p.add_argument("--out_workdir", default=None, help="the new run folder (must not hold a run)")
    p.add_argument("--pairs", default=None, help="the .npz of pairs to write (or read with --reuse_pairs)")
    p.add_argument("--num_pairs", type=int, default=20000, help="coupled pairs to draw")
    p.add_argument("--sampler", default="ode_adaptive", help="deterministic sampler of the pairs")
    p.add_argument("--steps", type=int, default=50, help="steps of a fixed-step --sampler")
    p.add_argument("--tol", type=float, default=1e-5, help="rtol = atol of ode_adaptive")
    p.add_argument("--batch_size", type=int, default=2000, help="pairs solved per call")
    p.add_argument("--n_iters", type=int, default=5000, help="updates of the new run")
    p.add_argument("--init", default="fork", choices=["fork", "scratch"], help="start from the run or afresh")
    p.add_argument("--num_straight", type=int, default=1000, help="draws of the straightness measure (0: skip)")
    p.add_argument("--seed", type=int, default=0, help="seed of the pairs (the straightness uses seed + 1)")
    p.add_argument("--reuse_pairs", action="store_true", help="train on an existing --pairs file as it is")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --pairs file")
    p.add_argument("--measure_only", action="store_true", help="only print the straightness of --workdir")
    return p


def _straightness(run, n: int, seed: int) -> dict:
    return reflow.straightness(run.sde, run.score_fn, jax.random.PRNGKey(seed), n, run.model_dims,
                               eps=run.config.training.eps)


def main(argv=None) -> None:
    a = parser().parse_args(argv)
    with cli.exit_on_user_error():
        if a.n_iters < 1 or a.num_pairs < 1 or a.num_straight < 0:
            raise ValueError("--n_iters and --num_pairs must be >= 1 and --num_straight >= 0")
        if not a.measure_only and not (a.out_workdir and a.pairs):
            raise ValueError("--out_workdir and --pairs are required (unless --measure_only)")
        if a.measure_only and a.num_straight < 1:
            raise ValueError("--measure_only needs --num_straight >= 1")
        run = load_run(a.workdir)
        if run.kind is not None or run.first_stage is not None or run.objective != "score":
            raise ValueError(f"{a.workdir}: reflow takes an unconditional data-space score run")
        if a.measure_only:
            print(json.dumps({"source": a.workdir, "source_step": run.step,
                              "source_straightness": _straightness(run, a.num_straight, a.seed + 1)}))
            return
        if os.path.exists(os.path.join(a.out_workdir, "config.json")):
            raise ValueError(f"{a.out_workdir} already holds a run; choose a new --out_workdir")
        eps = run.config.training.eps
        report = {"source": a.workdir, "source_step": run.step, "pairs": a.pairs}
        start = time.perf_counter()
        if a.reuse_pairs:
            x, _ = read_pairs(a.pairs, run.model_dims)
            report.update(num_pairs=len(x), pairs_reused=True)
        else:
            if os.path.exists(a.pairs) and not a.overwrite:
                raise ValueError(f"{a.pairs} exists; pass --reuse_pairs to train on it or --overwrite to replace it")
            options = {"rtol": a.tol, "atol": a.tol} if a.sampler == "ode_adaptive" else {}
            x, noise, info = reflow.make_pairs(run.sde, run.score_fn, jax.random.PRNGKey(a.seed), a.num_pairs,
                                               run.model_dims, sampler=a.sampler, steps=a.steps,
                                               batch_size=a.batch_size, eps=eps, **options)
            write_pairs(a.pairs, x, noise, overwrite=a.overwrite, source=os.path.abspath(a.workdir), step=run.step,
                        sampler=a.sampler, eps=eps)
            report.update(num_pairs=a.num_pairs, pairs_nfe=info["nfe"], pairs_seconds=time.perf_counter() - start)
        if a.num_straight:
            report["source_straightness"] = _straightness(run, a.num_straight, a.seed + 1)

        config = run.config
        config.data.pairs = os.path.abspath(a.pairs)
        config.training.n_iters = (run.step if a.init == "fork" else 0) + a.n_iters
        start = time.perf_counter()
        trainer.train(config, a.out_workdir, fork_from=a.workdir if a.init == "fork" else None)
        report["train_seconds"] = time.perf_counter() - start
        if a.num_straight:
            report["reflow_straightness"] = _straightness(load_run(a.out_workdir), a.num_straight, a.seed + 1)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
