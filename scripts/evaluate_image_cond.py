"""Image-to-image runs measured: super-resolution against interpolation, learned inpainting against the
training-free methods of an unconditional model on the same test images and masks.

    python scripts/evaluate_image_cond.py --sr_workdir runs/digits_sr --inpaint_workdir runs/digits_inpaint \
        --uncond_workdir runs/quickstart [--n 200] [--sr_samplers dpm_solver_pp_3m:20,ancestral:100] \
        [--sr_guidance 2] [--interpolations bicubic,bilinear,nearest] [--training_free pigdm,dps,replace,repaint] \
        [--training_free_nfe 20,100] [--sr_zeta Z] [--sr_data_std 0.5] [--inpaint_nfe 20,50,100] \
        [--methods replace,repaint,dps] [--learned_guidance 1,2] [--out out/image_to_image]

Two parts (``sde_lib.evaluation``), each run when its run is given:

* ``--sr_workdir`` (a ``condition.kind='image'`` run): ``image_cond.super_resolution_table`` on the first
  ``--n`` test images pooled by the run's factor: each ``--sr_samplers`` entry (SAMPLER:STEPS), also with
  classifier-free guidance at each ``--sr_guidance`` scale, each ``--interpolations`` method and, with
  ``--uncond_workdir``, each ``--training_free`` method (``image_cond.training_free``: ``guidance.linear_inverse``
  with the unconditional run and ``operators.AvgPool(factor)``, at each ``--training_free_nfe`` budget; DPS
  with ``--sr_zeta``, ΠGDM with ``--sr_data_std``); PSNR, consistency, class accuracy, FD, diversity at a
  fixed input; sr.png: input | bicubic | 4 samples | truth; with training-free methods also sr_methods.png:
  input | 4 outputs | truth of the run (first sampler) and of each training-free method (largest budget);
* ``--inpaint_workdir`` (a ``condition.kind='masked_image'`` run) with ``--uncond_workdir`` (the model of
  ``--methods``): ``conditional.inpainting_table`` — docs/conditional.md's test images and masks and code
  path — with the learned run's rows (``ancestral`` with as many steps as each NFE budget, plain and at
  each ``--learned_guidance`` scale) beside the training-free methods', agreement and FD; inpainting.png:
  observed | 4 completions | truth per mask.

Writes image_to_image.{md,json,csv}, sr.png, sr_methods.png and inpainting.png into ``--out``; existing files are kept
unless ``--overwrite``. Runs are read only.
"""

from __future__ import annotations

import os

from sde_lib import cli, figures
from sde_lib.evaluation import conditional as conditional_eval
from sde_lib.evaluation import image_cond, report


def parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sr_workdir", default=None, help="a super-resolution run (condition.kind='image')")
    p.add_argument("--inpaint_workdir", default=None, help="a learned inpainting run (condition.kind='masked_image')")
    p.add_argument("--uncond_workdir", default=None, help="the unconditional run of the training-free inpainting "
                                                          "(--methods) and super-resolution (--training_free) methods")
    p.add_argument("--n", type=int, default=200, help="test images of both tables")
    p.add_argument("--sr_samplers", default="dpm_solver_pp_3m:20,ancestral:100", help="SAMPLER:STEPS list")
    p.add_argument("--sr_guidance", default="2", help="classifier-free guidance scales of the first sampler")
    p.add_argument("--interpolations", default="bicubic,bilinear,nearest")
    p.add_argument("--training_free", default="pigdm,dps,replace,repaint",
                   help="training-free super-resolution methods of --uncond_workdir (with --sr_workdir)")
    p.add_argument("--training_free_nfe", default="20,100", help="NFE budgets of the training-free super-resolution")
    p.add_argument("--sr_zeta", default="", help="DPS's step size (super-resolution): one value, or one per "
                                                 "--training_free_nfe budget; default: image_cond.DPS_ZETA's value "
                                                 "for the nearest budget (3 at 20 NFE, 1.5 at 100)")
    p.add_argument("--sr_data_std", type=float, default=image_cond.PIGDM_DATA_STD,
                   help="ΠGDM's prior scale (super-resolution)")
    p.add_argument("--diversity_inputs", type=int, default=50)
    p.add_argument("--diversity_samples", type=int, default=16)
    p.add_argument("--inpaint_nfe", default="20,50,100", help="NFE budgets of the inpainting table")
    p.add_argument("--methods", default="replace,repaint,dps", help="training-free inpainting methods")
    p.add_argument("--learned_guidance", default="1,2", help="classifier-free guidance scales of the learned "
                                                             "inpainting run (1: the conditional model itself)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache_dir", default=None, help="feature-classifier cache folder")
    p.add_argument("--out", default="out/image_to_image")
    p.add_argument("--overwrite", action="store_true")
    return p


def _samplers(text: str) -> list[tuple[str, int]]:
    out = []
    for item in cli.comma_list(text, str, "--sr_samplers"):
        name, sep, steps = item.partition(":")
        if not sep or not steps.isdigit() or int(steps) < 1:
            raise ValueError(f"--sr_samplers entries must be SAMPLER:STEPS, got {item!r}")
        out.append((name, int(steps)))
    return out


def _check_kind(run, flag: str, kind: str) -> None:
    if run.kind is None or run.kind.name != kind:
        raise ValueError(f"{flag} {run.workdir} is not a condition.kind={kind!r} run "
                         f"(it is {'unconditional' if run.kind is None else repr(run.kind.name)})")


def main(argv=None) -> None:
    a = parser().parse_args(argv)
    with cli.exit_on_user_error():
        from sde_lib.runs import load_run

        samplers = _samplers(a.sr_samplers)
        scales = cli.comma_list(a.sr_guidance, float, "--sr_guidance")
        nfes = cli.comma_list(a.inpaint_nfe, int, "--inpaint_nfe")
        learned_scales = [None if w == 1 else w for w in cli.comma_list(a.learned_guidance, float,
                                                                        "--learned_guidance")]
        methods = [m for m in a.methods.split(",") if m.strip()]
        interpolations = [m for m in a.interpolations.split(",") if m.strip()]
        free = [m for m in a.training_free.split(",") if m.strip()] if a.sr_workdir and a.uncond_workdir else []
        free_nfes = cli.comma_list(a.training_free_nfe, int, "--training_free_nfe") if free else []
        for m in free:
            if m not in image_cond.TRAINING_FREE:
                raise ValueError(f"--training_free entries must be among {','.join(image_cond.TRAINING_FREE)}, "
                                 f"got {m!r}")
        zetas = cli.comma_list(a.sr_zeta, float, "--sr_zeta") if free and a.sr_zeta.strip() else [None]
        if len(zetas) not in (1, len(free_nfes)):
            raise ValueError(f"--sr_zeta needs one value or one per --training_free_nfe budget ({len(free_nfes)}), "
                             f"got {a.sr_zeta!r}")
        zeta_of = dict(zip(free_nfes, zetas * len(free_nfes) if len(zetas) == 1 else zetas))
        if any(nfe < 2 for nfe in free_nfes):
            raise ValueError(f"--training_free_nfe budgets must be >= 2 (DPS takes 2 per step), got "
                             f"{a.training_free_nfe}")
        if not (a.sr_workdir or a.inpaint_workdir):
            raise ValueError("give --sr_workdir, --inpaint_workdir or both")
        if a.inpaint_workdir and methods and not a.uncond_workdir:
            raise ValueError("--methods needs --uncond_workdir (the unconditional model they inpaint with)")
        for name, value in (("--n", a.n), ("--diversity_inputs", a.diversity_inputs),
                            ("--diversity_samples", a.diversity_samples)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        pngs = ((["sr.png"] if a.sr_workdir else []) + (["sr_methods.png"] if free else [])
                + (["inpainting.png"] if a.inpaint_workdir else []))
        report.check_outputs([os.path.join(a.out, f) for f in ["image_to_image.md", "image_to_image.csv",
                                                               "image_to_image.json", *pngs]], a.overwrite)
        rows, meta, md, written = [], {}, [], []
        if a.sr_workdir:
            run = load_run(a.sr_workdir)
            _check_kind(run, "--sr_workdir", "image")
            factor = run.kind.factor(run.config)
            sr = [image_cond.conditional_model(run, s, k) for s, k in samplers]
            sr += [image_cond.conditional_model(run, *samplers[0], w) for w in (scales if samplers else [])]
            sr += [image_cond.interpolation(m, factor) for m in interpolations]
            if free:
                uncond = load_run(a.uncond_workdir)
                if uncond.kind is not None:
                    raise ValueError(f"--uncond_workdir {uncond.workdir} is a condition.kind={uncond.kind.name!r} "
                                     f"run; the training-free methods need an unconditional one")
                image_cond.check_model_space(uncond, run.config.data, "--uncond_workdir")
                tf = {(m, nfe): image_cond.training_free(uncond, m, nfe, factor, zeta=zeta_of[nfe],
                                                         data_std=a.sr_data_std) for m in free for nfe in free_nfes}
                sr += list(tf.values())
            t = image_cond.super_resolution_table(run.config.data, factor, sr, n=a.n, seed=a.seed,
                                                  diversity_inputs=a.diversity_inputs,
                                                  diversity_samples=a.diversity_samples, cache_dir=a.cache_dir)
            rows += [{"part": "super_resolution", **r} for r in t["rows"]]
            meta["super_resolution"] = {**t["meta"], "workdir": a.sr_workdir}
            if free:
                meta["super_resolution"].update(uncond_workdir=a.uncond_workdir, data_std=a.sr_data_std)
            md.append(f"Run {a.sr_workdir} (step {run.step})" + (f"; training-free methods with {a.uncond_workdir} "
                                                                  f"(step {uncond.step})" if free else "") + ". "
                      + image_cond.super_resolution_markdown(t))
            figure = image_cond.super_resolution_figure(run, factor, seed=a.seed)
            written.append(os.path.join(a.out, "sr.png"))
            os.makedirs(a.out, exist_ok=True)
            figures.save_png(written[-1], figures.labelled_rows(
                figure, [f"test {i}" for i in range(len(figure))],
                f"x{factor} super-resolution: input | bicubic | 4 samples | truth", cell=48))
            if free:
                label = {"pigdm": "PiGDM", "dps": "DPS", "replace": "replacement", "repaint": "RePaint"}
                top = max(free_nfes)
                shown = {"SR model": sr[0]} if samplers else {}
                shown.update({label[m]: tf[m, top] for m in free})
                figure, labels = image_cond.methods_figure(shown, run.config.data, factor, seed=a.seed)
                model = f"SR model: {samplers[0][0]} {samplers[0][1]}; " if samplers else ""
                written.append(os.path.join(a.out, "sr_methods.png"))
                figures.save_png(written[-1], figures.labelled_rows(
                    figure, labels, f"x{factor} super-resolution: input | 4 outputs | truth ({model}training-free: "
                                    f"{a.uncond_workdir}, {top} NFE)", cell=48))
        if a.inpaint_workdir:
            learned = load_run(a.inpaint_workdir)
            _check_kind(learned, "--inpaint_workdir", "masked_image")
            uncond = load_run(a.uncond_workdir) if a.uncond_workdir else learned
            t = conditional_eval.inpainting_table(uncond, methods, nfes, n=a.n, seed=a.seed, cache_dir=a.cache_dir,
                                                  learned=learned, learned_guidance=learned_scales)
            rows += [{"part": "inpainting", **r} for r in t["rows"]]
            meta["inpainting"] = t["meta"]
            md.append(conditional_eval.inpainting_markdown(t, uncond.workdir))
            shown, labels = image_cond.inpainting_figure(learned, conditional_eval.MASKS, seed=a.seed)
            written.append(os.path.join(a.out, "inpainting.png"))
            os.makedirs(a.out, exist_ok=True)
            figures.save_png(written[-1], figures.labelled_rows(
                shown, labels, "learned inpainting (ancestral, 50 NFE): observed (missing grey) | 4 completions | "
                               "truth", cell=48))
        text = "\n".join(md)
        paths = list(report.write_report(a.out, "image_to_image", rows, text, meta=meta, overwrite=True).values())
    print(text)
    print("wrote " + ", ".join(paths + written))


if __name__ == "__main__":
    main()
