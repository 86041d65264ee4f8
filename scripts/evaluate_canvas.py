"""Prompt adherence of canvas models side by side: one table row per run (and per guidance scale / sampler).

    python scripts/evaluate_canvas.py --workdirs runs/canvas_latent_caption,runs/canvas_latent_pooled@1000,... \
        [--guidance 1,1.5,3,5 [--guidance_all]] [--samplers dpm_solver_pp_3m,unipc] [--steps 20] [--prompts 40] \
        [--per_prompt 5] [--out out/canvas]

A workdir may name a checkpoint: ``DIR@STEP`` (default: the newest). Columns (``sde_lib.evaluation.canvas``):
adherence on seen prompts, binding (order-swapped prompts) and composition (held-out combinations), FD / KID in the slot evaluator's features, NFE and seconds per
sample; the evaluator's ceiling on real canvases (and on autoencoder reconstructions, PSNR) heads the
table. The guidance sweep applies to the first run (to every conditional run with --guidance_all), the
extra samplers to the first run. Writes canvas.{md,csv,json} and canvas.png (a labelled grid per run) into
--out; existing files are kept unless --overwrite.
"""

from __future__ import annotations

import os

import jax
import numpy as np

from sde_lib import cli, figures
from sde_lib.evaluation import canvas as canvas_eval
from sde_lib.evaluation import report
from sde_lib.metrics.canvas import get_evaluator
from sde_lib.data import canvas, to_uint8


def parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdirs", required=True, help="comma-separated canvas runs (score runs)")
    p.add_argument("--guidance", default="3", help="classifier-free guidance scales (first run; every "
                   "conditional run with --guidance_all)")
    p.add_argument("--guidance_all", action="store_true", help="sweep --guidance for every conditional run, "
                   "not only the first (the others get 3 otherwise)")
    p.add_argument("--samplers", default="dpm_solver_pp_3m", help="samplers (first run)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--prompts", type=int, default=40, help="prompts per set")
    p.add_argument("--per_prompt", type=int, default=5, help="samples per prompt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--canvas", default=None, help="the canvas data set of the runs' images (default: their "
                   "data.dataset; needed for runs trained on scripts/export_canvas.py's files)")
    p.add_argument("--cache_dir", default=None, help="evaluator cache folder")
    p.add_argument("--out", default="out/canvas")
    p.add_argument("--overwrite", action="store_true")
    return p


def main(argv=None) -> None:
    a = parser().parse_args(argv)
    with cli.exit_on_user_error():
        for name, value in (("--steps", a.steps), ("--prompts", a.prompts), ("--per_prompt", a.per_prompt)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        report.check_outputs([os.path.join(a.out, f"canvas.{e}") for e in ("md", "csv", "json", "png")],
                             a.overwrite)
        runs = [_load(w) for w in a.workdirs.split(",") if w.strip()]
        if not runs:
            raise ValueError("--workdirs is empty")
        name = a.canvas or runs[0].config.data.dataset
        if name not in canvas.SPECS or (a.canvas is None and any(r.config.data.dataset != name for r in runs)):
            raise ValueError(f"--workdirs must all be runs on one canvas data set (or name it: --canvas), got "
                             f"{[r.config.data.dataset for r in runs]}")
        evaluator = get_evaluator(name, cache_dir=a.cache_dir)
        meta = {"ceiling": canvas_eval.real_ceiling(name, evaluator, a.prompts, a.seed)}
        stage = next((r.first_stage for r in runs if r.first_stage is not None), None)
        if stage is not None:
            meta["autoencoder"] = {"workdir": stage.workdir, "step": stage.step,
                                   **canvas_eval.autoencoder_quality(stage, name, evaluator, n_fd=a.prompts * a.per_prompt,
                                                                     seed=a.seed)}
        rows, grids = [], []
        for i, run in enumerate(runs):
            conditional = run.kind is not None
            if (i == 0 or a.guidance_all) and conditional:
                scales = cli.comma_list(a.guidance, float, "--guidance")
            else:
                scales = [3.0] if conditional else [None]
            samplers = a.samplers.split(",") if i == 0 else [a.samplers.split(",")[0]]
            for sampler in samplers:
                for w in scales:
                    r = canvas_eval.evaluate_run(run, evaluator, n_prompts=a.prompts, per_prompt=a.per_prompt,
                                                 guidance=w, sampler=sampler, steps=a.steps, seed=a.seed,
                                                 canvas=name)
                    rows.append({"run": _name(run),
                                 "conditioning": _conditioning(run), "space": "latent" if run.first_stage else "pixel",
                                 **r})
            grids.append(_grid(run, a.seed, name))
        md = _markdown(rows, meta)
        paths = report.write_report(a.out, "canvas", rows, md, meta=meta, overwrite=a.overwrite,
                                    plot=lambda path: figures.save_png(path, _stack(grids)))
    print(md)
    print("wrote " + ", ".join(paths.values()))


def _load(spec: str):
    """``DIR`` (the newest checkpoint) or ``DIR@STEP``."""
    from sde_lib.runs import load_run

    path, _, step = spec.strip().partition("@")
    if step and not step.isdigit():
        raise ValueError(f"--workdirs: {spec!r} must be DIR or DIR@STEP")
    return load_run(path, int(step) if step else None)


def _name(run) -> str:
    return f"{os.path.basename(os.path.normpath(run.workdir))}@{run.step}"


def _conditioning(run) -> str:
    if run.kind is None:
        return "none"
    return f"{run.kind.name} (pooled)" if run.config.model.context_pooled else f"{run.kind.name} (cross-attention)"


# The grid's prompts as (class, slot) objects: classes 3 and 7 side by side and swapped, 2 above 5, an 8 alone
# ("a 3 left of a 7", ... on the digit canvas; "a dress left of a sneaker", ... on the Fashion-MNIST canvas).
PROMPT_OBJECTS = (((3, 0), (7, 1)), ((7, 0), (3, 1)), ((2, 0), (5, 2)), ((8, 1),))


def grid_prompts(name: str) -> list[str]:
    """The grid's prompts in the words of canvas data set ``name``."""
    return [canvas.caption_of(canvas.SPECS[name], list(objs)) for objs in PROMPT_OBJECTS]


def _grid(run, seed: int, name: str):
    """A labelled grid: one row per prompt, 6 samples each (guidance 3)."""
    d = run.config.data
    rows, labels = [], []
    for prompt in grid_prompts(name):
        kw = {}
        if run.kind is not None and run.kind.name == "caption":
            kw = {"condition": prompt, "guidance": 3.0}
        elif run.kind is not None and run.kind.name == "layout":
            kw = {"condition": _layout_of(prompt, name), "guidance": 3.0}
        x, _ = run.sample(jax.random.PRNGKey(seed), 6, "dpm_solver_pp_3m", 20, **kw)
        rows.append(to_uint8(np.asarray(x), d.levels, d.centered))
        labels.append(prompt if kw else f"(unconditional) {prompt}")
    title = f"{_name(run)}: {_conditioning(run)}, dpm_solver_pp_3m 20 steps"
    return figures.labelled_rows(rows, labels, title, cell=3 * canvas.SPECS[name].size)


def _layout_of(prompt: str, name: str) -> np.ndarray:
    """The boxes of a caption (the top row for a relation "left of", the left column for "above")."""
    spec = canvas.SPECS[name]
    words = prompt.split()
    names = {n: i for i, n in enumerate(spec.class_names)}
    if " at the " in prompt:
        slot = canvas.SLOTS.index(prompt.split(" at the ")[1])
        r, c = divmod(slot, 2)
        return np.array([[names[words[1]], c / 2, r / 2, (c + 1) / 2, (r + 1) / 2]])
    a, b = names[words[1]], names[words[-1]]
    if " left of " in prompt:
        return np.array([[a, 0, 0, 0.5, 0.5], [b, 0.5, 0, 1, 0.5]])
    return np.array([[a, 0, 0, 0.5, 0.5], [b, 0, 0.5, 0.5, 1]])


def _stack(grids):
    width = max(g.shape[1] for g in grids)
    padded = [np.pad(g, ((0, 8), (0, width - g.shape[1]), (0, 0)), constant_values=255) for g in grids]
    return np.concatenate(padded)


def _markdown(rows, meta) -> str:
    c = meta["ceiling"]
    lines = [f"Evaluator ceiling on real test canvases: adherence {c['seen']:.3f} (seen prompts), "
             f"{c['composition']:.3f} (held-out combinations); real-vs-real FD {c['fd']:.3f}, KID {c['kid']:.4f}."]
    if "autoencoder" in meta:
        ae = meta["autoencoder"]
        lines.append(f"Autoencoder {ae['workdir']} (step {ae['step']}): PSNR {ae['psnr']:.2f} dB; slot accuracy "
                     f"{ae['slot_accuracy_recon']:.3f} on reconstructions vs {ae['slot_accuracy_real']:.3f} on the "
                     f"originals; adherence {ae['adherence_recon']:.3f} vs {ae['adherence_real']:.3f}; FD of "
                     f"reconstructions against as many real canvases as the samples' FD uses {ae['fd_recon']:.3f} "
                     f"(KID {ae['kid_recon']:.4f}): the floor latent samples can reach.")
    lines += ["", "| run | space | conditioning | sampler | guidance | NFE | seen | binding | composition | FD | KID "
                  "| s / sample |", "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        per = r["seen_seconds"] / r["seen_n"]
        lines.append(f"| {r['run']} | {r['space']} | {r['conditioning']} | {r['sampler']} | "
                     f"{'-' if r['guidance'] is None else r['guidance']:} | {r['nfe']:.0f} | {r['seen']:.3f} | "
                     f"{r['binding']:.3f} | {r['composition']:.3f} | {r['fd']:.3f} | {r['kid']:.4f} | {per:.4f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
