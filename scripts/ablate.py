"""Compare samplers x NFE budgets on one score source; write a CSV, a markdown table and a plot.

    .venv/bin/python scripts/ablate.py --mixture ring2d --sde vp --nfe 10,20,50,100,1000 --out out/ablate_ring2d_vp

Source: ``--mixture NAME|FILE.json`` (a built-in Gaussian mixture or ``{"means", "stds", "weights"}``)
under ``--sde``, or ``--workdir DIR`` (a training run's EMA network, newest checkpoint or ``--step``).
Samplers: ``--samplers a,b,...`` (default every fixed-step sampler plus the adaptive ones); fixed-step
samplers run at each ``--nfe`` budget, ``ode_adaptive`` / ``sde_adaptive`` once per ``--tolerances``
value. Metrics and their definitions: ``sde_lib.evaluation.ablation``; a trained image model (``--workdir`` of a
digits run) adds Fréchet distance, KID, precision and recall with their floors (``--n`` up to the test
split's size, e.g. 360 for digits). Bad input ends with a one-line error.

    .venv/bin/python scripts/ablate.py --workdir runs/quickstart --n 360 --out out/ablate_digits_vp
"""

from __future__ import annotations


from sde_lib import cli
from sde_lib.evaluation import ablation, report


def parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser(description=__doc__.split("\n")[0])
    src = p.add_mutually_exclusive_group()
    src.add_argument("--mixture", default="ring2d", help="built-in mixture name or a .json mixture file")
    src.add_argument("--workdir", default=None, help="training run directory (its EMA network is the source)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step of --workdir (default: newest)")
    p.add_argument("--params", default="ema", choices=["ema", "raw"], help="parameters of --workdir")
    p.add_argument("--sde", default="vp", choices=ablation.SDE_CHOICES, help="SDE of the --mixture oracle")
    p.add_argument("--samplers", default=None, help="comma-separated names (default: all)")
    p.add_argument("--nfe", default="10,20,50,100,1000", help="NFE budgets of the fixed-step samplers")
    p.add_argument("--tolerances", default="1e-2,1e-3,1e-4", help="rtol = atol values of the adaptive samplers")
    p.add_argument("--n", type=int, default=2000, help="samples per entry (the same prior draws for all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eps", type=float, default=None, help="end time (default: 1e-3 VP/sub-VP, 1e-5 VE)")
    p.add_argument("--denoise", action="store_true", help="finish every sampler with the Tweedie step (+1 NFE)")
    p.add_argument("--ref_tol", type=float, default=1e-8, help="rtol = atol of the reference ODE solve")
    p.add_argument("--ref_float32", action="store_true", help="reference solve in float32 instead of float64")
    p.add_argument("--projections", type=int, default=128, help="directions of the sliced W2 distance")
    p.add_argument("--floor_draws", type=int, default=5, help="exact sets behind the distance floor")
    p.add_argument("--cache_dir", default=None, help="feature-classifier cache folder (image workdirs)")
    p.add_argument("--out", default="out/ablate")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    return p


def main(argv=None) -> None:
    a = parser().parse_args(argv)
    with cli.exit_on_user_error():
        report.check_outputs([f"{a.out}/ablation.{e}" for e in ("csv", "md", "json", "png")], a.overwrite)
        source = (ablation.workdir_source(a.workdir, a.step, a.params) if a.workdir
                  else ablation.oracle_source(a.mixture, a.sde))
        samplers = cli.comma_list(a.samplers, str, "--samplers") if a.samplers else (
            ablation.default_samplers() + ablation.adaptive_samplers())
        result = ablation.run_ablation(
            source, samplers, cli.comma_list(a.nfe, int, "--nfe"),
            tolerances=cli.comma_list(a.tolerances, float, "--tolerances"),
            n=a.n, seed=a.seed, eps=a.eps, denoise=a.denoise, ref_tol=a.ref_tol, ref_x64=not a.ref_float32,
            num_projections=a.projections, floor_draws=a.floor_draws, cache_dir=a.cache_dir)
        paths = ablation.write_outputs(result, a.out, overwrite=a.overwrite)
    print(ablation.markdown(result))
    print("wrote " + ", ".join(paths.values()))


if __name__ == "__main__":
    main()
