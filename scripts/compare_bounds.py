"""Bits/dim of trained runs through the PF-ODE beside their variational bound (docs/results.md's table).

    .venv/bin/python scripts/compare_bounds.py runs/digits_vp runs/digits_ddpm [--n_draws 32] [--out out/bounds]

For each run: ``Run.bpd(method="ode")`` (the config's dequantisation draws and Hutchinson trace) and
``Run.bpd(method="elbo")`` with ``--n_draws`` Monte-Carlo draws per example (DDPM runs: its chain bound with
Ho et al.'s discretised decoder, and with the Gaussian decoder under both fixed variances, one draw each).
Prints each run's fields (mean and median over the test digits) and writes ``bounds.json`` into ``--out``.
"""

from __future__ import annotations

import json
import os


from sde_lib import cli
from sde_lib.runs import load_run


def main(argv=None):
    p = cli.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("workdirs", nargs="+", help="trained run folders")
    p.add_argument("--n_draws", type=int, default=32, help="Monte-Carlo draws per example of the continuous bound")
    p.add_argument("--out", default="out/bounds")
    a = p.parse_args(argv)
    with cli.exit_on_user_error():
        rows = []
        for workdir in a.workdirs:
            run = load_run(workdir)
            row = {"run": workdir, "ode": run.bpd(method="ode")}
            if run.is_ddpm:
                for decoder, variance in (("discretized", "small"), ("gaussian", "small"), ("gaussian", "large")):
                    row[f"elbo_{decoder}_{variance}"] = run.bpd(method="elbo", decoder=decoder, variance=variance,
                                                               n_dequant=1)
            else:
                row["elbo"] = run.bpd(method="elbo", n_dequant=a.n_draws)
            rows.append(row)
            print(json.dumps(row, indent=1), flush=True)
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, "bounds.json"), "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
