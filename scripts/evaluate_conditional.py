"""Conditional generation on a labelled data set, measured: guidance, inpainting, conditional bits/dim.

    python scripts/evaluate_conditional.py --workdir runs/digits_cond [--classifier runs/digits_classifier] \
        [--guidance 0,1,1.5,2,3,5] [--classifier_guidance 1,2,5] [--samplers dpm_solver_pp_3m,ancestral] \
        [--steps 20] [--per_class 36] [--inpaint_workdir runs/quickstart] [--inpaint_nfe 20,50,100] \
        [--methods replace,repaint,dps] [--inpaint_n 200] [--bpd_num 360] [--out out/conditional]

Three parts (``sde_lib.evaluation.conditional``), each skipped by giving it nothing to do (``--guidance ''``,
``--inpaint_nfe ''``, ``--bpd_num 0``):

* guidance: ``--per_class`` samples of every class per sampler and scale, classifier-free (scale s:
  s_u + s (s_c - s_u)) and, with ``--classifier``, classifier guidance; the data set's feature classifier
  gives the accuracy of the generated class and FD / KID against the test split, beside the real floors;
* inpainting: ``--inpaint_n`` test images under three masks completed by each method at each NFE by the
  model of ``--inpaint_workdir`` (default: ``--workdir``; a conditional run inpaints with its null
  branch), scored by the classifier's agreement with the true class; a PNG of observed / completions /
  truth per mask;
* conditional bits/dim: log p(x | y) and log p(x) of ``--workdir`` on ``--bpd_num`` test images, and the
  bound log2(C) / D on their gap.

Writes conditional.{md,json,csv}, and inpainting_<mask>.png and guidance.png (one row per class, four
scales side by side) into ``--out``; existing files are kept unless ``--overwrite``. Runs are read only.
"""

from __future__ import annotations

import os

import numpy as np

from sde_lib import cli, figures
from sde_lib.evaluation import conditional as conditional_eval
from sde_lib.evaluation import report


def parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True, help="a class-conditional score run")
    p.add_argument("--classifier", default=None, help="a noise-conditional classifier run (classifier guidance)")
    p.add_argument("--guidance", default="0,1,1.5,2,3,5", help="classifier-free guidance scales")
    p.add_argument("--classifier_guidance", default="1,2,5", help="classifier guidance scales")
    p.add_argument("--samplers", default="dpm_solver_pp_3m,ancestral")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--per_class", type=int, default=36, help="samples per class and table row")
    p.add_argument("--inpaint_workdir", default=None, help="the model that inpaints (default --workdir)")
    p.add_argument("--inpaint_nfe", default="20,50,100", help="NFE budgets of the inpainting table")
    p.add_argument("--methods", default="replace,repaint,dps")
    p.add_argument("--inpaint_n", type=int, default=200)
    p.add_argument("--bpd_num", type=int, default=360, help="test images for bits/dim (0: skip)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache_dir", default=None, help="feature-classifier cache folder")
    p.add_argument("--out", default="out/conditional")
    p.add_argument("--overwrite", action="store_true")
    return p


def main(argv=None) -> None:
    a = parser().parse_args(argv)
    with cli.exit_on_user_error():
        from sde_lib.runs import load_run

        scales = cli.comma_list(a.guidance, float, "--guidance")
        cscales = cli.comma_list(a.classifier_guidance, float, "--classifier_guidance")
        nfes = cli.comma_list(a.inpaint_nfe, int, "--inpaint_nfe")
        methods = [m for m in a.methods.split(",") if m.strip()]
        for name, value in (("--steps", a.steps), ("--per_class", a.per_class), ("--inpaint_n", a.inpaint_n)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        unknown = sorted(set(methods) - {"replace", "repaint", "dps"})
        if unknown:
            raise ValueError(f"--methods: unknown {unknown}; choose from replace, repaint, dps")
        files = [os.path.join(a.out, f"conditional.{e}") for e in ("md", "csv", "json")]
        files += [os.path.join(a.out, f"inpainting_{m}.png") for m in conditional_eval.MASKS] if nfes else []
        report.check_outputs(files + [os.path.join(a.out, "guidance.png")], a.overwrite)

        run = load_run(a.workdir)
        if not run.num_classes:
            raise ValueError(f"--workdir {a.workdir} is unconditional (config.model.num_classes=0)")
        clf_run = load_run(a.classifier) if a.classifier else None
        if clf_run is not None and clf_run.config.training.objective != "classifier":
            raise ValueError(f"--classifier {a.classifier} is not a classifier run "
                             f"(training.objective={clf_run.config.training.objective!r})")
        inpainter = load_run(a.inpaint_workdir) if a.inpaint_workdir else run
        rows, meta = [], {"workdir": a.workdir, "classifier": a.classifier, "inpaint_workdir": inpainter.workdir}
        if scales or (clf_run is not None and cscales):
            g = conditional_eval.guidance_table(run, scales, a.samplers.split(","), n_per_class=a.per_class,
                                                steps=a.steps, seed=a.seed, classifier_run=clf_run,
                                                classifier_scales=cscales, cache_dir=a.cache_dir)
            rows += [{"part": "guidance", **r} for r in g["rows"]]
            meta["guidance"] = g["meta"]
        if nfes and methods:
            t = conditional_eval.inpainting_table(inpainter, methods, nfes, n=a.inpaint_n, seed=a.seed,
                                                  cache_dir=a.cache_dir)
            rows += [{"part": "inpainting", **r} for r in t["rows"]]
            meta["inpainting"] = t["meta"]
        if a.bpd_num > 0:
            meta["bpd"] = conditional_eval.conditional_bpd(run, num=a.bpd_num, seed=a.seed)
        md = _markdown(rows, meta)

        def plot(path) -> list[str]:
            written = [path]
            figures.save_png(path, _guidance_grid(run, scales or [1.0], a.samplers.split(",")[0], a.steps,
                                                         a.seed))
            for kind in conditional_eval.MASKS if nfes else ():
                steps = max(nfes)
                rows_ = conditional_eval.inpainting_figure(inpainter, kind, "repaint" if "repaint" in methods
                                                           else methods[0], _fig_steps(steps, methods), seed=a.seed)
                labels = [f"test {i}: observed | 4 completions | truth" for i in range(len(rows_))]
                title = f"inpainting, mask {kind}, {'repaint' if 'repaint' in methods else methods[0]}"
                written.append(os.path.join(os.path.dirname(path), f"inpainting_{kind}.png"))
                figures.save_png(written[-1], figures.labelled_rows(rows_, labels, title, cell=48))
            return written

        paths = list(report.write_report(a.out, "conditional", rows, md, meta=meta, overwrite=a.overwrite).values())
        paths += plot(os.path.join(a.out, "guidance.png"))
    print(md)
    print("wrote " + ", ".join(paths))


def _fig_steps(nfe: int, methods) -> int:
    """Reverse steps of the figure's method at the table's largest budget."""
    if "repaint" in methods:
        return conditional_eval.repaint_steps(nfe, 5, 2)
    return max(1, nfe // 2) if methods[0] == "dps" else nfe


def _guidance_grid(run, scales, sampler: str, steps: int, seed: int):
    """One row per class: 4 samples at each of up to four guidance scales (the first, 1, and the two largest),
    side by side, so that the drift from diversity to adherence reads along a row."""
    shown = sorted(set([scales[0], *(w for w in scales if w == 1.0), *sorted(scales)[-2:]]))[:4]
    rows = [np.concatenate([conditional_eval.cfg_guided_samples(run, label, w, 4, sampler, steps, seed)
                            for w in shown]) for label in range(run.num_classes)]
    labels = [f"class {label}" for label in range(run.num_classes)]
    title = (f"{os.path.basename(os.path.normpath(run.workdir))}, {sampler} {steps} steps; 4 samples at "
             f"guidance {', '.join(f'{w:g}' for w in shown)}")
    return figures.labelled_rows(rows, labels, title, cell=48)


def _markdown(rows, meta) -> str:
    lines = []
    g = meta.get("guidance")
    if g is not None:
        lines += [f"Guidance ({g['n']} samples per row, FD / KID on {g['metric_n']}): feature classifier's test "
                  f"accuracy {g['real_accuracy']:.3f}; real-data floor FD {g['fd_floor']:.3f} +- "
                  f"{g['fd_floor_err']:.3f}, KID {g['kid_floor']:.4f} +- {g['kid_floor_err']:.4f}.", "",
                  "| sampler | guidance | scale | NFE | class accuracy | FD | KID | s |",
                  "|---|---|---:|---:|---:|---:|---:|---:|"]
        for r in (r for r in rows if r["part"] == "guidance"):
            lines.append(f"| {r['sampler']} | {r['guidance']} | {r['scale']:g} | {r['nfe']:.0f} | {r['accuracy']:.3f} "
                         f"| {r['fd']:.3f} +- {r['fd_err']:.3f} | {r['kid']:.4f} +- {r['kid_err']:.4f} "
                         f"| {r['seconds']:.1f} |")
        lines.append("")
    t = meta.get("inpainting")
    if t is not None:
        lines.append(conditional_eval.inpainting_markdown(
            {"rows": [r for r in rows if r["part"] == "inpainting"], "meta": t}, meta["inpaint_workdir"]))
    b = meta.get("bpd")
    if b is not None:
        c, u = b["conditional"], b["unconditional"]
        lines += [f"Bits/dim on {c['num']} test images: log p(x | y) {c['bpd']:.3f} +- {c['bpd_stderr']:.3f}, "
                  f"log p(x) {u['bpd']:.3f} +- {u['bpd_stderr']:.3f}; gap {b['gap']:.4f} against the bound "
                  f"log2(C)/D = {b['bound']:.4f}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
