"""Few-step sampling study: our samplers on named and calibrated grids, beside the official DPM-Solver code.

    .venv/bin/python scripts/benchmark_fewstep.py --mixture ring2d --sde vp --nfe 5,6,8,10,15,20,50 \\
        --official /work/scratch/dpm_solver/dpm_solver_jax.py --out out/fewstep/ring2d_vp
    .venv/bin/python scripts/benchmark_fewstep.py --workdir runs/quickstart --nfe 5,8,10,15,20 --n 360 \\
        --official /work/scratch/dpm_solver/dpm_solver_jax.py --out out/fewstep/digits

Source: ``--mixture`` (a Gaussian-mixture oracle under ``--sde``) or ``--workdir`` (a trained run, read only).
Every entry starts from the same ``--n`` prior draws; metrics and the calibration protocol are those of
``sde_lib.evaluation.study``. ``--official PATH`` loads ``dpm_solver_jax.py`` of LuChengTHU/dpm-solver from
PATH (it is not part of this project) and runs its configurations on the same draws: noise / data
prediction x multistep / singlestep ("DPM-Solver-fast") x orders 1-3 x its logSNR / time_uniform /
time_quadratic grids, with the exact score wrapped as the noise model -sigma_t * score. VP uses its
``NoiseScheduleVP('linear', 0.1, 20)``; other SDEs a schedule object with the same methods built from our SDE.
Image sources also get FD / KID per entry unless ``--no_fd`` (that costs seconds per entry on a CPU).
Outputs: ``fewstep.{csv,md,json}`` in ``--out`` (never overwritten without ``--overwrite``).
"""

from __future__ import annotations

import importlib.util
import itertools
import os

import jax
import jax.numpy as jnp

from sde_lib import cli
from sde_lib.evaluation import ablation, report, study

SAMPLERS = ("ddim;dpm_solver_2;dpm_solver_3;dpm_solver_2m;dpm_solver_3m;dpm_solver_pp_2m;dpm_solver_pp_3m;"
            "unipc;unipc:prediction=noise;unipc:variant=bh1;unipc:variant=bh1,prediction=noise;"
            "unipc:order=2,variant=bh1,prediction=noise;ipndm;deis;deis:order=4;deis:basis=rho;"
            "ode_euler;ode_heun;ode_midpoint;edm_heun")
CALIBRATED = "dpm_solver_2m;unipc:variant=bh1,prediction=noise;ipndm"


class SDESchedule:
    """The noise-schedule interface of the official code (log alpha_t, sigma_t, lambda_t and its inverse)
    for any of our SDEs; used where its own ``NoiseScheduleVP`` does not apply (VE)."""

    schedule, total_N = "sde", 1000

    def __init__(self, sde):
        self.sde, self.T = sde, sde.T

    def marginal_log_mean_coeff(self, t):
        return jnp.log(self.sde.marginal_coeffs(t)[0])

    def marginal_alpha(self, t):
        return self.sde.marginal_coeffs(t)[0]

    def marginal_std(self, t):
        return self.sde.marginal_coeffs(t)[1]

    def marginal_lambda(self, t):
        return self.sde.half_log_snr(t)

    def inverse_lambda(self, lam):
        return self.sde.t_from_half_log_snr(lam)


def official_methods(path: str, source) -> dict:
    """``label -> fn(x_init, nfe) -> x`` for the official configurations (module docstring)."""
    if not os.path.isfile(path):
        raise ValueError(f"--official: {path!r} is not a file (dpm_solver_jax.py of LuChengTHU/dpm-solver)")
    spec = importlib.util.spec_from_file_location("dpm_solver_jax", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    sde = source.sde
    vp = type(sde).__name__ == "VPSDE"
    schedule = mod.NoiseScheduleVP("linear", continuous_beta_0=sde.beta_min, continuous_beta_1=sde.beta_max) \
        if vp else SDESchedule(sde)
    eps = sde.default_eps

    def noise_model(x, t):
        sigma = sde.marginal_coeffs(t)[1].reshape((-1,) + (1,) * (x.ndim - 1))
        return -sigma * source.score_fn(x, t)

    methods = {}
    for px0, method, order, skip in itertools.product((False, True), ("multistep", "singlestep"), (1, 2, 3),
                                                      ("logSNR", "time_uniform", "time_quadratic")):
        if order == 1 and (px0 or method == "singlestep"):
            continue  # order 1 is DDIM in every form
        solver = mod.DPM_Solver(noise_model, schedule, predict_x0=px0)
        label = f"official:{'data' if px0 else 'noise'},{method},order={order},{skip}"

        def run(x, nfe, solver=solver, method=method, order=order, skip=skip):
            if method == "multistep" and nfe < order:
                return jnp.full_like(x, jnp.nan)
            fn = jax.jit(lambda x: solver.sample(x, steps=nfe, t_end=eps, order=order, skip_type=skip, method=method))
            return fn(x)

        methods[label] = run
    return methods


def parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser(description=__doc__.split("\n")[0])
    src = p.add_mutually_exclusive_group()
    src.add_argument("--mixture", default="ring2d", help="built-in mixture name or a .json mixture file")
    src.add_argument("--workdir", default=None, help="training run directory (its EMA network is the source)")
    p.add_argument("--sde", default="vp", choices=ablation.SDE_CHOICES, help="SDE of the --mixture oracle")
    p.add_argument("--samplers", default=SAMPLERS, help="';'-separated candidates name[:key=value,...]")
    p.add_argument("--calibrated", default=CALIBRATED, help="';'-separated candidates run on calibrated grids")
    p.add_argument("--grids", default="logsnr,quadratic,uniform,edm", help="named grids of every candidate")
    p.add_argument("--nfe", default="5,6,8,10,15,20,50", help="NFE budgets")
    p.add_argument("--n", type=int, default=1000, help="measured prior draws (shared by every entry)")
    p.add_argument("--n_cal", type=int, default=256, help="calibration draws (disjoint from the measured ones)")
    p.add_argument("--cal_iters", type=int, default=200)
    p.add_argument("--cal_lr", type=float, default=0.05)
    p.add_argument("--cal_objectives", default="geometric", help="calibration objectives: geometric, mean")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ref_tol", type=float, default=1e-9, help="rtol = atol of the float64 reference solve")
    p.add_argument("--official", default=None, help="path of the official dpm_solver_jax.py (optional)")
    p.add_argument("--no_fd", action="store_true", help="image sources: endpoint errors only, no FD / KID")
    p.add_argument("--cache_dir", default=None, help="feature-classifier cache folder (image workdirs)")
    p.add_argument("--out", default="out/fewstep")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    return p


def main(argv=None) -> None:
    a = parser().parse_args(argv)
    with cli.exit_on_user_error():
        report.check_outputs([f"{a.out}/fewstep.{e}" for e in ("csv", "md", "json")], a.overwrite)
        source = ablation.workdir_source(a.workdir) if a.workdir else ablation.oracle_source(a.mixture, a.sde)
        candidates = [study.parse_candidate(s) for s in a.samplers.split(";") if s.strip()]
        calibrated = [study.parse_candidate(s) for s in a.calibrated.split(";") if s.strip()]
        external = official_methods(a.official, source) if a.official else None
        result = study.run_study(source, candidates, cli.comma_list(a.nfe, int, "--nfe"),
                                 grids=cli.comma_list(a.grids, str, "--grids"),
                                 calibrated=calibrated, n=a.n, seed=a.seed, ref_tol=a.ref_tol, n_cal=a.n_cal,
                                 cal_iters=a.cal_iters, cal_lr=a.cal_lr,
                                 cal_objectives=cli.comma_list(a.cal_objectives, str, "--cal_objectives"),
                                 external=external, cache_dir=a.cache_dir,
                                 image_metrics=not a.no_fd)
        text = study.markdown(result)
        paths = report.write_report(a.out, "fewstep", result["rows"], text, meta=result["meta"],
                                    columns=study.COLUMNS, overwrite=a.overwrite)
    print(text.split("\n\n")[0] + "\n\n" + text.split("\n\n")[1])
    print("wrote " + ", ".join(paths.values()))


if __name__ == "__main__":
    main()
