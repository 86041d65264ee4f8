"""Sample a trained run: a PNG grid (a scatter plot for 2-D data) and an .npz of the samples.

    python scripts/sample.py --workdir=runs/digits_vp [--sampler=dpm_solver_pp_3m] [--steps=20] [--num=64]

Sampler, steps, options and count default to the run's config.sampling; --option NAME=VALUE (repeatable)
sets a sampler option, e.g. --option eta=0.5. Class-conditional runs take --label (a class, a comma list,
or ``all``: one row of --num samples per class, labelled), caption runs --prompt "a 3 left of a 7" and
layout runs --layout "3,0,0,0.5,0.5;7,0.5,0,1,0.5" (each repeatable: a labelled row each), all with
--guidance W (classifier-free guidance s_u + W (s_c - s_u); without it the conditional model itself).
Latent runs return decoded images. Reads the run folder only. Writes OUT.png and OUT.npz (arrays
``samples``, ``nfe``, ``step``) with OUT = --out, default out/samples/<run>/<sampler>_<steps>_seed<seed>;
existing files are kept unless --overwrite.
"""

import ast
import json
import os

from absl import app, flags, logging

_WORKDIR = flags.DEFINE_string("workdir", None, "Training run directory.", required=True)
_SAMPLER = flags.DEFINE_string("sampler", None, "Sampler name (default: config.sampling.sampler).")
_STEPS = flags.DEFINE_integer("steps", None, "Solver steps (default: config.sampling.steps).")
_NUM = flags.DEFINE_integer("num", None, "Number of samples (default: config.sampling.batch_size).")
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed of the prior draws and sampler noise.")
_DENOISE = flags.DEFINE_bool("denoise", None, "Final Tweedie denoising step (default: config.sampling.denoise).")
_OPTION = flags.DEFINE_multi_string("option", [], "Sampler option NAME=VALUE (Python literal), repeatable.")
_PARAMS = flags.DEFINE_enum("params", "ema", ["ema", "raw"], "EMA or raw (last) parameters.")
_STEP = flags.DEFINE_integer("checkpoint", None, "Checkpoint step (default: the newest).")
_OUT = flags.DEFINE_string("out", None, "Output path without extension.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace existing output files.")
_LABEL = flags.DEFINE_string("label", None, "Class(es) of a conditional run: N, N,M,..., or 'all' (a row per class).")
_GUIDANCE = flags.DEFINE_float("guidance", None, "Classifier-free guidance scale (conditional runs).")
_PROMPT = flags.DEFINE_multi_string("prompt", [], "Caption of a caption run, repeatable (a row of --num each).")
_LAYOUT = flags.DEFINE_multi_string("layout", [], "Boxes 'class,x0,y0,x1,y1;...' of a layout run, repeatable.")


def parse_options(items: list[str]) -> dict:
    options = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"--option must be NAME=VALUE, got {item!r}")
        try:
            options[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            options[name] = value  # a bare word, e.g. time_grid=quadratic
    return options


def parse_labels(text: str | None, num_classes: int) -> list[int] | None:
    if text is None:
        return None
    if text == "all":
        return list(range(num_classes))
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--label must be a class, a comma-separated list of classes or 'all', got {text!r}") from None


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    import time

    import jax
    import numpy as np

    from sde_lib import cli, logging_utils, report
    from sde_lib.data import to_uint8
    from sde_lib.runs import load_run
    from sde_lib.text import parse_layout
    from sde_lib.trainer import samples_to_png

    with cli.exit_on_user_error():
        for name, value in (("--steps", _STEPS.value), ("--num", _NUM.value)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        options = parse_options(_OPTION.value)
        run = load_run(_WORKDIR.value, _STEP.value, _PARAMS.value)
        s = run.config.sampling
        sampler, steps, num = _SAMPLER.value or s.sampler, _STEPS.value or s.steps, _NUM.value or s.batch_size
        labels = parse_labels(_LABEL.value, run.num_classes)
        conditions = [("label", f"class {c}", c) for c in labels or []]
        conditions += [("prompt", p, p) for p in _PROMPT.value]
        conditions += [("layout", text, parse_layout(text)) for text in _LAYOUT.value]
        if len({kind for kind, _, _ in conditions}) > 1:
            raise ValueError("give one of --label, --prompt or --layout")
        if _GUIDANCE.value is not None and not conditions:
            raise ValueError("--guidance needs a condition to guide towards (--label, --prompt or --layout)")
        run_name = os.path.basename(os.path.normpath(_WORKDIR.value))
        tag = "" if labels is None else f"_label{_LABEL.value.replace(',', '-')}"
        tag += "" if not _PROMPT.value else "_" + "-".join(p.replace(" ", "_") for p in _PROMPT.value)[:60]
        tag += "" if not _LAYOUT.value else f"_layout{len(_LAYOUT.value)}"
        tag += "" if _GUIDANCE.value is None else f"_w{_GUIDANCE.value:g}"
        out = _OUT.value or os.path.join("out", "samples", run_name, f"{sampler}_{steps}{tag}_seed{_SEED.value}")
        report.check_outputs([out + ".png", out + ".npz"], _OVERWRITE.value)
        start = time.perf_counter()
        kw, total = {}, num
        if conditions:
            kind = conditions[0][0]
            total = num * len(conditions)
            values = [v for _, _, v in conditions for _ in range(num)]
            kw = {kind: np.asarray(values) if kind == "label" else values}
            if kind == "layout":
                kw = {"layout": np.stack([np.pad(v, ((0, 2 - len(v)), (0, 0)), constant_values=-1)
                                          for v in values])}
        x, info = run.sample(jax.random.PRNGKey(_SEED.value), total, sampler, steps, guidance=_GUIDANCE.value,
                             denoise=_DENOISE.value, **kw, **options)
        x = np.asarray(x)
        seconds = time.perf_counter() - start
        nfe = float(np.mean(np.asarray(info["nfe"])))
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        np.savez(out + ".npz", samples=x, nfe=nfe, step=run.step,
                 **({"conditions": np.asarray([c for _, c, _ in conditions])} if conditions else {}))
        if not conditions or x.ndim != 4:
            samples_to_png(run.config, x, out + ".png")
        else:
            d = run.config.data
            images = to_uint8(x, d.levels or 256, d.centered)
            title = f"{run_name} step {run.step}: {sampler}, {steps} steps ({nfe:g} NFE)" + (
                "" if _GUIDANCE.value is None else f", guidance {_GUIDANCE.value:g}")
            grid = logging_utils.labelled_rows([images[i * num:(i + 1) * num] for i in range(len(conditions))],
                                               [c for _, c, _ in conditions], title)
            logging_utils.save_png(out + ".png", grid)
    print(json.dumps({"step": run.step, "params": run.params, "sampler": sampler, "steps": int(steps), "nfe": nfe,
                      "num": len(x), "conditions": [c for _, c, _ in conditions], "guidance": _GUIDANCE.value,
                      "seconds": seconds, "png": out + ".png", "npz": out + ".npz"}))


if __name__ == "__main__":
    from sde_lib.cli import absl_flags_parser

    app.run(main, flags_parser=absl_flags_parser)
