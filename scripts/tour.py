"""The quick-start tour's measurements and report: one part at a time, after ``scripts/quickstart.sh`` trained it.

    python scripts/tour.py PART --runs runs --out runs/quickstart/tour --first_step N --train_seconds S
    python scripts/tour.py report --out runs/quickstart/tour --report runs/quickstart/report.md

Parts (their run folders under ``--runs``; ``quickstart.sh`` trains them first):

* ``unconditional`` (``quickstart``, configs/digits/vp.py): test bits/dim through the PF-ODE, two sample
  grids, and a sampler ablation: a few samplers x NFE 10 / 20 / 50 from the same prior draws, against a
  reference solve (``sde_lib.evaluation.ablation``: endpoint error, FD in the digits classifier's features);
* ``ddpm`` (``quickstart_ddpm``, configs/digits/ddpm.py): ancestral samples over the 1000-step chain, and
  DDPM's own variational bound beside its PF-ODE bits/dim (mean and median) and the VP model's bound;
* ``conditional`` (``quickstart_cond``, configs/digits/cond_vp.py): one row per class with classifier-free
  guidance, and the class accuracy of the samples in the metric classifier at two guidance scales;
* ``latent`` (``quickstart_canvas_ae`` then ``quickstart_canvas``, the canvas configs): a labelled grid of
  prompts with a held-out combination and an order-swapped pair, and prompt adherence on seen prompts,
  order-swapped prompts (binding) and held-out combinations (composition).

Each part writes ``PART.md`` (its report section), ``PART.json`` (the numbers) and its pictures into
``--out``, replacing the tour's own files of that part (nothing else); ``report`` joins the sections that
exist into ``--report``. ``--first_step`` (the newest checkpoint before this call) and ``--train_seconds``
let a section say truthfully whether this call trained, resumed or reused the run.
"""

from __future__ import annotations

import json
import os
import time

import jax
import numpy as np

from sde_lib import cli, figures
from sde_lib.data import canvas as canvas_data
from sde_lib.data import to_uint8
from sde_lib.evaluation import ablation
from sde_lib.evaluation import canvas as canvas_eval
from sde_lib.evaluation.conditional import guidance_table
from sde_lib.metrics.canvas import get_evaluator
from sde_lib.runs import RunFolder, load_run

PARTS = ("unconditional", "ddpm", "conditional", "latent")
RUNS = {"unconditional": "quickstart", "ddpm": "quickstart_ddpm", "conditional": "quickstart_cond",
        "latent": "quickstart_canvas"}
TITLES = {"unconditional": "1. Unconditional digits: VP SDE, bits/dim and a sampler ablation",
          "ddpm": "2. DDPM: ancestral samples and its variational bound",
          "conditional": "3. Class-conditional digits with classifier-free guidance",
          "latent": "4. Text-prompted latent diffusion on the digit canvas"}
ABLATION_SAMPLERS = ("euler_maruyama", "ode_euler", "ddim", "dpm_solver_pp_3m", "unipc")
ABLATION_NFE = (10, 20, 50)
CLASS_SCALES = (1.0, 3.0)  # class accuracy at two guidance scales
CANVAS_GUIDANCE = 3.0


def training_line(workdir: str, step: int, first_step: int, seconds: int) -> str:
    """What this call did to ``workdir``: trained from scratch, resumed, or reused; and its last losses."""
    if first_step == 0:
        line = f"trained {step} steps in {seconds} s (wall, including compilation)"
    elif step > first_step:
        line = f"resumed at step {first_step} and trained {step - first_step} more steps, to {step}, in {seconds} s"
    else:
        line = f"reused the finished run at step {step} (no training; {seconds} s to check it)"
    metrics = RunFolder(workdir).read_metrics()
    losses = [r["loss"] for r in metrics if "loss" in r]
    evals = [r["eval_loss"] for r in metrics if "eval_loss" in r]
    line += f"; final training loss {losses[-1]:.4f}" if losses else ""
    line += f", held-out loss {evals[-1]:.4f}" if evals else ""
    return f"- `{workdir}`: {line}"


def _png(out: str, name: str, image: np.ndarray) -> str:
    figures.save_png(os.path.join(out, name), image)
    return name


def _grid_png(out: str, name: str, config, x) -> str:
    """A grid of samples, nearest-neighbour enlarged to about 512 pixels."""
    figures.samples_to_png(config, np.asarray(x), os.path.join(out, name))
    return name


def _uint8(config, x) -> np.ndarray:
    return to_uint8(np.asarray(x), config.data.levels or 256, bool(config.data.centered))


def unconditional(a) -> tuple[list[str], dict]:
    run = load_run(os.path.join(a.runs, RUNS["unconditional"]))
    bpd = run.bpd()
    lines = [f"- **test bits/dim {bpd['bpd']:.3f} ± {bpd['bpd_stderr']:.3f}** (median {bpd['bpd_median']:.3f}; "
             f"{bpd['num']} {bpd['split']} digits, PF-ODE with {bpd['trace']} trace, {bpd['nfe']:.0f} network "
             f"calls per digit, {bpd['seconds']:.0f} s)", ""]
    key = jax.random.PRNGKey(0)
    lines += ["| sampler | steps | NFE | samples |", "|---|---:|---:|---|"]
    for sampler, steps in (("dpm_solver_pp_3m", 20),):  # the ablation below compares samplers by numbers
        x, info = run.sample(key, 64, sampler, steps)
        png = _grid_png(a.out, f"unconditional_{sampler}.png", run.config, x)
        lines.append(f"| {sampler} | {steps} | {float(np.mean(info['nfe'])):.0f} | ![{sampler}]({png}) |")
    result = ablation.run_ablation(ablation.workdir_source(run.workdir), ABLATION_SAMPLERS, ABLATION_NFE,
                                   tolerances=(), n=360, progress=False)
    ablation.write_outputs(result, os.path.join(a.out, "ablation"), overwrite=True)
    best = {nfe: ablation.best_sampler([r for r in result["rows"] if r["budget"] == nfe]) for nfe in ABLATION_NFE}
    lines += ["", "**Sampler ablation** (`scripts/ablate.py` does the same on any run or oracle): every entry starts "
              "from the same 360 prior draws; endpoint error is the distance to a reference solve (adaptive "
              "Tsit5, tolerance 1e-8, float64) from those draws, blank for the stochastic sampler. Most accurate "
              "deterministic sampler per budget: " + ", ".join(f"NFE {k}: `{v}`" for k, v in best.items()) + ".",
              "", ablation.markdown(result), "![sampler ablation](ablation/ablation.png)"]
    return lines, {"bpd": bpd, "ablation": result["rows"], "ablation_meta": result["meta"]}


def _saved(out: str, part: str, field: str, step: int) -> dict | None:
    """``field`` of a part's saved numbers when they are of the run's checkpoint ``step`` (else None)."""
    path = os.path.join(out, f"{part}.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        value = json.load(f).get(field)
    return value if isinstance(value, dict) and value.get("step") == step else None


def _tail_note(ode: dict) -> str:
    """Whether DDPM's ODE values have the heavy tail docs/results.md traced ("The DDPM ODE tail")."""
    if ode["bpd"] > ode["bpd_median"] + 0.5:
        return (f"The ODE's mean ({ode['bpd']:.3f}) is far above its median ({ode['bpd_median']:.3f}): a few digits "
                "get absurd values where the unpreconditioned eps-network extrapolates at the noisy end "
                "(docs/results.md, \"The DDPM ODE tail\"); DDPM's likelihood figure is its bound.")
    return ("The ODE values of this run have no heavy tail (mean near median); other DDPM runs have had one "
            "(docs/results.md, \"The DDPM ODE tail\"), which is why the bound is DDPM's likelihood figure.")


def ddpm(a) -> tuple[list[str], dict]:
    run = load_run(os.path.join(a.runs, RUNS["ddpm"]))
    x, info = run.sample(jax.random.PRNGKey(0), 64)  # the config's sampler: ancestral over the chain
    png = _grid_png(a.out, "ddpm_ancestral.png", run.config, x)
    ode = run.bpd(method="ode")
    bound = run.bpd(method="elbo", decoder="gaussian", variance="large", n_dequant=1)
    vp = load_run(os.path.join(a.runs, RUNS["unconditional"]))
    vp_ode = _saved(a.out, "unconditional", "bpd", vp.step) or vp.bpd(method="ode")  # part 1's, if current
    vp_bound = vp.bpd(method="elbo", n_dequant=8)
    row = "| {} | {:.3f} ± {:.3f} | {:.3f} | {} |"
    lines = [f"Ancestral samples, {run.config.sampling.steps} steps ({float(np.mean(info['nfe'])):.0f} network "
             f"calls): ![ddpm]({png})", "",
             "Bits/dim on the test digits: the PF-ODE (an exact likelihood of the ODE model, Hutchinson trace) and "
             "the variational bound of the reverse-time model (DDPM: the 1000-step chain's L_T + sum L_t + L_0 with "
             "beta as reverse variance and a Gaussian decoder on dequantised digits; VP: the continuous-time bound, "
             "8 Monte-Carlo draws per digit). " + _tail_note(ode),
             "", "| model, method | mean | median | network calls per digit |", "|---|---:|---:|---:|",
             row.format("DDPM, PF-ODE", ode["bpd"], ode["bpd_stderr"], ode["bpd_median"], f"{ode['nfe']:.0f}"),
             row.format("**DDPM, chain bound**", bound["bpd"], bound["bpd_stderr"], bound["bpd_median"],
                        f"{bound['nfe']:.0f}"),
             row.format("VP, PF-ODE", vp_ode["bpd"], vp_ode["bpd_stderr"], vp_ode["bpd_median"],
                        f"{vp_ode['nfe']:.0f}"),
             row.format("VP, continuous bound", vp_bound["bpd"], vp_bound["bpd_stderr"], vp_bound["bpd_median"],
                        f"{vp_bound['nfe']:.0f}")]
    return lines, {"ddpm_ode": ode, "ddpm_bound": bound, "vp_ode": vp_ode, "vp_bound": vp_bound}


def conditional(a) -> tuple[list[str], dict]:
    run = load_run(os.path.join(a.runs, RUNS["conditional"]))
    per, scale = 10, CLASS_SCALES[-1]
    labels = np.repeat(np.arange(run.num_classes), per)
    x, _ = run.sample(jax.random.PRNGKey(0), len(labels), label=labels, guidance=scale)
    images = _uint8(run.config, x)
    grid = figures.labelled_rows([images[i * per:(i + 1) * per] for i in range(run.num_classes)],
                                 [f"class {c}" for c in range(run.num_classes)], f"guidance {scale:g}")
    png = _png(a.out, "conditional_grid.png", grid)
    table = guidance_table(run, CLASS_SCALES, ["dpm_solver_pp_3m"], n_per_class=36, steps=20)
    meta = table["meta"]
    lines = [f"One row per class, classifier-free guidance {scale:g}, `dpm_solver_pp_3m` 20 steps: ![grid]({png})", "",
             f"Class accuracy of {meta['n']} samples (36 per class) in the metric classifier (test accuracy "
             f"{meta['classifier_accuracy']:.3f}; real test digits {meta['real_accuracy']:.3f}); FD in its features "
             f"(real-vs-real floor {meta['fd_floor']:.2f}):", "",
             "| guidance | NFE | class accuracy | FD |", "|---:|---:|---:|---:|"]
    for r in table["rows"]:
        lines.append(f"| {r['scale']:g} | {r['nfe']:.0f} | **{r['accuracy']:.3f}** | "
                     f"{r['fd']:.2f} ± {r['fd_err']:.2f} |")
    return lines, table


def latent(a) -> tuple[list[str], dict]:
    run = load_run(os.path.join(a.runs, RUNS["latent"]))
    name = run.config.data.dataset
    sets = canvas_eval.prompt_sets(name, 20)
    seen = [c for c, _ in sets["seen"]]
    pair = next(c for c in seen if canvas_data.swapped(c, canvas_data.SPECS[name]) in {b for b, _ in sets["binding"]})
    prompts = ([c for c in seen if c != pair][:3] + [pair, canvas_data.swapped(pair, canvas_data.SPECS[name])]
               + [sets["composition"][0][0]])
    marks = ["seen"] * 3 + ["seen", "order swapped"] + ["held-out combination"]
    per = 8
    x, info = run.sample(jax.random.PRNGKey(0), per * len(prompts), prompt=[p for p in prompts for _ in range(per)],
                         guidance=CANVAS_GUIDANCE)
    images = _uint8(run.config, x)
    grid = figures.labelled_rows([images[i * per:(i + 1) * per] for i in range(len(prompts))],
                                 [f'"{p}" ({m})' for p, m in zip(prompts, marks)], f"guidance {CANVAS_GUIDANCE:g}")
    png = _png(a.out, "latent_prompts.png", grid)
    evaluator = get_evaluator(name)
    r = canvas_eval.evaluate_run(run, evaluator, n_prompts=20, per_prompt=5, guidance=CANVAS_GUIDANCE)
    lines = [f"Decoded latent samples, `{r['sampler']}` {r['steps']} steps ({r['nfe']:.0f} network calls), "
             f"classifier-free guidance {CANVAS_GUIDANCE:g}: ![prompts]({png})", "",
             "Prompt adherence: the share of samples whose four slots show exactly their caption, judged by the "
             "framework's slot classifier (20 test prompts x 5 samples per set):", "",
             "| seen prompts | order-swapped (binding) | held-out combinations (composition) | FD | KID |",
             "|---:|---:|---:|---:|---:|",
             f"| **{r['seen']:.3f}** | {r['binding']:.3f} | {r['composition']:.3f} | {r['fd']:.2f} | {r['kid']:.4f} |"]
    return lines, r


def write_part(a) -> None:
    os.makedirs(a.out, exist_ok=True)
    lines, numbers = {"unconditional": unconditional, "ddpm": ddpm, "conditional": conditional,
                      "latent": latent}[a.part](a)
    workdirs = [RUNS[a.part]] if a.part != "latent" else ["quickstart_canvas_ae", "quickstart_canvas"]
    trained = []
    for w, first, sec in zip(workdirs, a.first_step, a.train_seconds):
        run = load_run(os.path.join(a.runs, w), warn=False)
        trained.append(training_line(run.workdir, run.step, first, sec))
    took = f"- this part took {time.time() - a.start:.0f} s of wall time" if a.start else ""
    section = [f"## {TITLES[a.part]}", "", *trained, took, "", *lines]
    with open(os.path.join(a.out, f"{a.part}.md"), "w") as f:
        f.write("\n".join(section) + "\n")
    with open(os.path.join(a.out, f"{a.part}.json"), "w") as f:
        json.dump(numbers, f, indent=1, default=float)
    print("\n".join(section))


def write_report(a) -> None:
    parts = [p for p in PARTS if os.path.exists(os.path.join(a.out, f"{p}.md"))]
    rel = os.path.relpath(a.out, os.path.dirname(os.path.abspath(a.report)))
    text = ["# Quick-start tour: the digits data, four systems", "",
            f"Parts in this report: {', '.join(parts)}; total wall time of the last call {a.total_seconds} s "
            "(`scripts/quickstart.sh [PART]`).", ""]
    for p in parts:
        with open(os.path.join(a.out, f"{p}.md")) as f:  # pictures are relative to the section's folder
            text.append(f.read().replace("](", f"]({rel}/").replace(f"]({rel}/http", "](http"))
    with open(a.report, "w") as f:
        f.write("\n".join(text))
    print(f"report: {a.report}")


def main(argv=None):
    p = cli.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("part", choices=PARTS + ("report",))
    p.add_argument("--runs", default="runs", help="the folder holding the tour's run folders")
    p.add_argument("--out", default="runs/quickstart/tour", help="the tour's sections and pictures")
    p.add_argument("--report", default="runs/quickstart/report.md")
    p.add_argument("--first_step", type=int, nargs="*", default=[0], help="newest checkpoint before training, per run")
    p.add_argument("--train_seconds", type=int, nargs="*", default=[0], help="wall seconds of training, per run")
    p.add_argument("--start", type=float, default=None, help="when the part began (seconds since the epoch)")
    p.add_argument("--total_seconds", type=int, default=0)
    a = p.parse_args(argv)
    with cli.exit_on_user_error():
        write_report(a) if a.part == "report" else write_part(a)


if __name__ == "__main__":
    main()
