"""Sample a trained run: a PNG grid (a scatter plot for 2-D data) and an .npz of the samples.

    python scripts/sample.py --workdir=runs/digits_vp [--sampler=dpm_solver_pp_3m] [--steps=20] [--num=64]

Sampler, steps, options and count default to the run's config.sampling; --option NAME=VALUE (repeatable)
sets a sampler option, e.g. --option eta=0.5. A conditional run takes its condition kind's flag
(``sde_lib.conditioning``): --label (a class number or name, a comma list, or ``all``: one row per class),
--prompt "a 3 left of a 7", --layout "3,0,0,0.5,0.5;sandal,0.5,0,1,0.5", --embedding FILE.npy or test:N,
--cond_image FILE.png or test:N, --masked_image FILE.png or test:N with --mask left_half|box:R0,C0,R1,C1|FILE.png
(a row per image and mask); or --cond, which any kind reads, its own included. Each flag is
repeatable, and each has a file form, one value a line: --labels, --prompts, --layouts, ... FILE (or
--cond_file FILE). Each value gives a labelled row of --num samples. --guidance W: classifier-free guidance s_u + W (s_c - s_u) (without it, the conditional
model itself). Latent runs return decoded images. Reads the run folder only. Writes OUT.png and OUT.npz
(arrays ``samples``, ``nfe``, ``step``, ``conditions``) with OUT = --out, default
out/samples/<run>/<sampler>_<steps>[_<condition>]_seed<seed>; existing files are kept unless --overwrite.
"""

import ast
import json
import os
import re
import time

import jax
import numpy as np
from absl import app, flags, logging

from sde_lib import cli, conditioning, figures, sampling
from sde_lib.data import to_uint8
from sde_lib.evaluation import report
from sde_lib.runs import load_run

_WORKDIR = flags.DEFINE_string("workdir", None, "Training run directory.", required=True)
_SAMPLER = flags.DEFINE_string("sampler", None, "Sampler name (default: config.sampling.sampler): "
                               + ", ".join(sampling.available_samplers()) + ".")
_STEPS = flags.DEFINE_integer("steps", None, "Solver steps (default: config.sampling.steps).")
_NUM = flags.DEFINE_integer("num", None, "Number of samples per condition (default: config.sampling.batch_size).")
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed of the prior draws and sampler noise.")
_DENOISE = flags.DEFINE_bool("denoise", None, "Final Tweedie denoising step (default: config.sampling.denoise).")
_OPTION = flags.DEFINE_multi_string("option", [], "Sampler option NAME=VALUE (Python literal), repeatable.")
_PARAMS = flags.DEFINE_enum("params", "ema", ["ema", "raw"], "EMA or raw (last) parameters.")
_STEP = flags.DEFINE_integer("checkpoint", None, "Checkpoint step (default: the newest).")
_OUT = flags.DEFINE_string("out", None, "Output path without extension.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace existing output files.")
_GUIDANCE = flags.DEFINE_float("guidance", None, "Classifier-free guidance scale (conditional runs).")
_COND = flags.DEFINE_multi_string("cond", [], "Condition of a conditional run, in its kind's format, repeatable.")
_COND_FILE = flags.DEFINE_string("cond_file", None, "A file of conditions in the run's kind's format, one a line.")
# Per registered condition kind, a flag named after its user_arg (--label, --prompt, --layout, --embedding,
# --cond_image) and a file of such values, one a line (--labels, --prompts, --layouts, ...).
_KIND_FLAGS = {k.user_arg: flags.DEFINE_multi_string(k.user_arg, [], k.help) for k in conditioning.registered()}
_KIND_FILES = {k.user_arg: flags.DEFINE_string(k.user_arg + "s", None, f"A file of --{k.user_arg} values, one a "
                                                                       f"line (a labelled row each).")
               for k in conditioning.registered()}
# Further flags a kind reads beside its own (--mask of masked_image), defined once per name.
_EXTRA_FLAGS = {name: flags.DEFINE_multi_string(name, [], text) for k in conditioning.registered()
                for name, text in k.cli_flags.items()}


def read_lines(path: str, flag: str) -> list[str]:
    """The non-empty lines of a condition file (surrounding white space removed); one line naming the file."""
    try:
        with open(path) as f:
            lines = [line.strip() for line in f if line.strip()]
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"--{flag}={path}: cannot read the file ({err})") from None
    if not lines:
        raise ValueError(f"--{flag}={path}: the file holds no conditions")
    return lines


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


def conditions(run) -> tuple[str, list[tuple[str, object]]]:
    """``(flag, [(label, value), ...])``: the rows the condition flags ask for (``("", [])`` for none)."""
    given = {arg: f.value for arg, f in _KIND_FLAGS.items() if f.value}
    given.update({arg: read_lines(f.value, arg + "s") for arg, f in _KIND_FILES.items() if f.value and arg not in given})
    if _COND.value or _COND_FILE.value:
        given["cond"] = _COND.value + (read_lines(_COND_FILE.value, "cond_file") if _COND_FILE.value else [])
    if len(given) > 1:
        raise ValueError(f"give one condition flag, got {', '.join('--' + g for g in sorted(given))}")
    if not given:
        unused = [name for name, f in _EXTRA_FLAGS.items() if f.value]
        if unused:
            raise ValueError(f"--{unused[0]} needs the condition it belongs to (e.g. --masked_image)")
        return "", []
    (flag, texts), = given.items()
    if run.kind is None or (flag != "cond" and flag != run.kind.user_arg):
        flag_of_kind = f"--{run.kind.user_arg} or " if run.kind is not None and run.kind.user_arg in _KIND_FLAGS else ""
        takes = "no condition" if run.kind is None else f"{flag_of_kind}--cond (condition.kind={run.kind.name!r})"
        raise ValueError(f"--{flag} does not apply to {run.workdir}: it takes {takes}")
    extra = {name: f.value for name, f in _EXTRA_FLAGS.items() if name in run.kind.cli_flags}
    ignored = [name for name, f in _EXTRA_FLAGS.items() if f.value and name not in extra]
    if ignored:
        raise ValueError(f"--{ignored[0]} does not apply to {run.workdir} (condition.kind={run.kind.name!r})")
    ctx = run.assembly.context
    return flag, [row for text in texts for row in run.kind.parse_cli(text, ctx, **extra)]


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    with cli.exit_on_user_error():
        for name, value in (("--steps", _STEPS.value), ("--num", _NUM.value)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        options = parse_options(_OPTION.value)
        run = load_run(_WORKDIR.value, _STEP.value, _PARAMS.value)
        s = run.config.sampling
        sampler, steps, num = _SAMPLER.value or s.sampler, _STEPS.value or s.steps, _NUM.value or s.batch_size
        flag, rows = conditions(run)
        if _GUIDANCE.value is not None and not rows:
            raise ValueError("--guidance needs a condition to guide towards (the run's condition flag, or --cond)")
        run_name = os.path.basename(os.path.normpath(_WORKDIR.value))
        tag = "" if not rows else "_" + re.sub(r"[^A-Za-z0-9.=-]+", "_", "-".join(label for label, _ in rows))[:60]
        tag += "" if _GUIDANCE.value is None else f"_w{_GUIDANCE.value:g}"
        out = _OUT.value or os.path.join("out", "samples", run_name, f"{sampler}_{steps}{tag}_seed{_SEED.value}")
        report.check_outputs([out + ".png", out + ".npz"], _OVERWRITE.value)
        start = time.perf_counter()
        values = [value for _, value in rows for _ in range(num)]
        total = num * max(1, len(rows))
        x, info = run.sample(jax.random.PRNGKey(_SEED.value), total, sampler, steps, guidance=_GUIDANCE.value,
                             condition=values if rows else None, denoise=_DENOISE.value, **options)
        x = np.asarray(x)
        seconds = time.perf_counter() - start
        nfe = float(np.mean(np.asarray(info["nfe"])))
        labels = [label for label, _ in rows]
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        np.savez(out + ".npz", samples=x, nfe=nfe, step=run.step,
                 **({"conditions": np.asarray(labels)} if rows else {}))
        if not rows or x.ndim != 4:
            figures.samples_to_png(run.config, x, out + ".png")
        else:
            d = run.config.data
            images = to_uint8(x, d.levels or 256, d.centered)
            title = f"{run_name} step {run.step}: {sampler}, {steps} steps ({nfe:g} NFE)" + (
                "" if _GUIDANCE.value is None else f", guidance {_GUIDANCE.value:g}")
            strips = [images[i * num:(i + 1) * num] for i in range(len(rows))]
            shown = [run.kind.preview(value, run.assembly.context) for _, value in rows]
            if all(p is not None for p in shown):  # an image condition: its picture, then the samples
                strips = [np.concatenate([to_uint8(p[None], d.levels or 256, d.centered), s])
                          for p, s in zip(shown, strips)]
                title += "; first column: the condition"
            grid = figures.labelled_rows(strips, labels, title)
            figures.save_png(out + ".png", grid)
    print(json.dumps({"step": run.step, "params": run.params, "sampler": sampler, "steps": int(steps), "nfe": nfe,
                      "num": len(x), "conditions": labels, "condition_flag": flag or None, "guidance": _GUIDANCE.value,
                      "seconds": seconds, "png": out + ".png", "npz": out + ".npz"}))


if __name__ == "__main__":
    app.run(main, flags_parser=cli.absl_flags_parser)
