"""Measuring image-to-image tasks on a labelled image data set: super-resolution (and the figures of it and of
learned inpainting; the inpainting table is :func:`sde_lib.evaluation.conditional.inpainting_table`'s).

:func:`super_resolution_table` runs a list of :class:`SRMethod` on the first ``n`` test images pooled by
``factor`` (the inputs an ``image`` run is trained on) and scores each output set against the truth:

* PSNR: per image 10 log10(1 / MSE) in [0, 1] units (outputs quantised to the data's levels, as saved
  images are; an MSE below 1e-10 counts as 100 dB), averaged over the images;
* consistency: the RMSE between the output pooled by ``factor`` and the input, in [0, 1] units (0: the
  output explains the input exactly);
* class accuracy: the data set's feature classifier (``metrics.classifier``) finds the true class;
* FD (with its bootstrap error) in the classifier's features against the test split, beside the
  real-vs-real floor and the truth's own FD;
* diversity at a fixed input: the per-pixel standard deviation over ``diversity_samples`` outputs of each of
  the first ``diversity_inputs`` inputs, averaged over pixels and inputs ([0, 1] units), and the PSNR of the
  mean of those outputs (a posterior-mean estimate; a sample's expected error is twice the posterior
  mean's, so single samples lose PSNR to a good regressor by design).

Methods: interpolation (:func:`interpolation`: ``bicubic``, ``bilinear``, ``nearest`` by
``jax.image.resize``), an ``image`` run (:func:`conditional_model`, optionally with classifier-free
guidance), and the training-free solvers of ``guidance.linear_inverse`` with an unconditional model and
the operator ``operators.AvgPool(factor)`` (:func:`training_free`: ΠGDM, DPS, replacement, RePaint). The
inputs are ``pool(x, factor)`` of the model-space images, the mean of each block: what an ``image`` run is
conditioned on and, exactly, ``AvgPool(factor).A(x)``, so every method sees the same measurement.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import jax
import numpy as np

from sde_lib import guidance
from sde_lib.conditioning.images import named_mask, pool
from sde_lib.data import load_labels, load_split, scale, to_uint8
from sde_lib.evaluation.conditional import repaint_steps
from sde_lib.metrics import evaluate_samples, get_classifier, reference
from sde_lib.operators import AvgPool

INTERPOLATIONS = ("bicubic", "bilinear", "nearest")
TRAINING_FREE = ("pigdm", "dps", "replace", "repaint")
# Chosen on the first 100 training digits, x2 (docs/image_to_image.md): DPS's best step size shrinks as its
# steps grow (3 at 20 NFE, 1.5 at 100); ΠGDM's data_std 0.5 is best at both budgets.
DPS_ZETA = {20: 3.0, 100: 1.5}
PIGDM_DATA_STD = 0.5
MODEL_SPACE = ("dataset", "image_size", "num_channels", "levels", "centered")  # data fields fixing model space


@dataclasses.dataclass(frozen=True)
class SRMethod:
    """A super-resolver: ``fn(y, key) -> (x, nfe)`` maps inputs ``y`` ``(N, h, w, C)`` in model space to
    outputs ``(N, H, W, C)``; row i of the output depends only on (key, i, y[i]). ``stochastic``: whether
    outputs of one input differ (diversity is measured; otherwise it is 0)."""

    name: str
    fn: Callable
    stochastic: bool = False


def interpolation(method: str, factor: int) -> SRMethod:
    """Upsampling by ``jax.image.resize`` (``bicubic``: Keys' cubic, a = -0.5; ``nearest``: repetition, the
    input itself at full size)."""
    if method not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {method!r}")

    def fn(y, key):
        n, h, w, c = y.shape
        return np.asarray(jax.image.resize(y, (n, h * factor, w * factor, c), method)), 0

    return SRMethod(method, fn)


def conditional_model(run, sampler: str, steps: int, guidance: float | None = None) -> SRMethod:
    """An ``image`` run sampled by ``sampler`` in ``steps`` steps (``guidance``: classifier-free, against no image)."""
    name = f"{run.kind.name} run, {sampler} {steps}" + ("" if guidance is None else f", guidance {guidance:g}")

    def fn(y, key):
        x, info = run.sample(key, len(y), sampler, steps, cond_image=list(y), guidance=guidance)
        return np.asarray(x), float(np.mean(np.asarray(info["nfe"])))

    return SRMethod(name, fn, stochastic=True)


def training_free(run, method: str, nfe: int, factor: int, *, zeta: float | None = None,
                  data_std: float = PIGDM_DATA_STD) -> SRMethod:
    """``guidance.linear_inverse`` with the unconditional ``run`` and ``AvgPool(factor)`` (noise-free y), at
    most ``nfe`` network calls per sample: ``pigdm`` (prior scale ``data_std``) and ``replace`` ``ancestral``
    with ``nfe`` steps (one call each), ``dps`` (step size ``zeta``; None: ``DPS_ZETA`` of the nearest budget)
    ``ancestral`` with ``nfe // 2`` steps (two calls each), ``repaint`` (jump length 5, 2 resamplings, as
    docs/conditional.md's table) with the most reverse steps whose walk costs at most ``nfe``. The reported
    NFE is ``info["nfe"]``."""
    if method not in TRAINING_FREE:
        raise ValueError(f"training-free method must be one of {TRAINING_FREE}, got {method!r}")
    operator = AvgPool(factor)
    zeta = DPS_ZETA[min(DPS_ZETA, key=lambda b: abs(b - nfe))] if zeta is None else zeta
    if method == "repaint":
        steps, kw, name = repaint_steps(nfe, 5, 2), {"jump_length": 5, "jump_n_sample": 2}, "RePaint"
    else:
        steps = max(1, nfe // 2) if method == "dps" else nfe
        kw = {"sampler": "ancestral", "zeta": zeta, "data_std": data_std}
        name = {"pigdm": f"ΠGDM (data_std {data_std:g})", "dps": f"DPS (zeta {zeta:g})",
                "replace": "replacement"}[method]
    name += f", {'DDIM' if method == 'repaint' else 'ancestral'} {steps} steps"

    def fn(y, key):
        x, info = guidance.linear_inverse(run.sde, run.score_fn, key, y, operator, method, steps=steps, **kw)
        return np.asarray(x), float(np.mean(np.asarray(info["nfe"])))

    return SRMethod(name, fn, stochastic=True)


def check_model_space(run, data_cfg, flag: str) -> None:
    """A ValueError naming ``flag`` unless ``run``'s images are in the model space of ``data_cfg``'s."""
    for field in MODEL_SPACE:
        if run.config.data[field] != data_cfg[field]:
            raise ValueError(f"{flag} {run.workdir}: data.{field}={run.config.data[field]!r}, but the "
                             f"super-resolution run's is {data_cfg[field]!r}")


def _psnr(u: np.ndarray, ref: np.ndarray) -> np.ndarray:
    mse = np.mean((u - ref) ** 2, axis=(1, 2, 3))
    return 10.0 * np.log10(1.0 / np.maximum(mse, 1e-10))


def super_resolution_table(data_cfg, factor: int, methods, *, n: int = 200, seed: int = 0,
                           diversity_inputs: int = 50, diversity_samples: int = 16,
                           cache_dir: str | None = None) -> dict:
    """Rows ``{method, nfe, psnr, consistency, accuracy, fd, fd_err, diversity, mean_psnr, seconds}`` of each
    method and a ``truth`` row; ``meta`` has the FD floor and the sizes (module docstring)."""
    spec = reference.image_spec(data_cfg)
    clf = get_classifier(data_cfg, cache_dir=cache_dir)
    levels = load_split(data_cfg, "test")[:n]
    labels = load_labels(data_cfg, "test")[:n]
    x_true = scale(levels, spec.levels, spec.centered)
    y = pool(x_true, factor)
    u_true = reference.to_unit(levels, spec)
    k, s = min(diversity_inputs, n), diversity_samples
    key = jax.random.PRNGKey(seed)

    def score(name, x, nfe, diversity, mean_psnr, seconds):
        u = reference.to_unit(np.asarray(x), spec)
        r = evaluate_samples(np.asarray(x), data_cfg, n=n, seed=seed, classifier=clf)
        return {"method": name, "nfe": nfe, "psnr": float(np.mean(_psnr(u, u_true))),
                "consistency": float(np.sqrt(np.mean((pool(u, factor) - pool(u_true, factor)) ** 2))),
                "accuracy": float(np.mean(clf.predict(np.asarray(x)) == labels)), "fd": r["fd"], "fd_err": r["fd_err"],
                "diversity": diversity, "mean_psnr": mean_psnr, "seconds": seconds}, r

    truth, r = score("truth", x_true, 0, 0.0, float("nan"), 0.0)
    truth["psnr"] = float("inf")
    rows = [truth]
    meta = {"n": n, "factor": factor, "fd_floor": r["fd_floor"], "fd_floor_err": r["fd_floor_err"],
            "classifier_accuracy": clf.accuracy, "diversity_inputs": k, "diversity_samples": s}
    for m in methods:
        start = time.perf_counter()
        x, nfe = m.fn(y, key)
        seconds = time.perf_counter() - start
        if m.stochastic:
            xs, _ = m.fn(np.repeat(y[:k], s, axis=0), jax.random.fold_in(key, 1))
            us = reference.to_unit(np.asarray(xs), spec).reshape(k, s, *u_true.shape[1:])
            diversity = float(np.mean(np.std(us, axis=1)))
            mean_psnr = float(np.mean(_psnr(us.mean(axis=1), u_true[:k])))
        else:
            diversity, mean_psnr = 0.0, float(np.mean(_psnr(reference.to_unit(np.asarray(x[:k]), spec), u_true[:k])))
        rows.append(score(m.name, x, nfe, diversity, mean_psnr, seconds)[0])
    return {"rows": rows, "meta": meta}


def super_resolution_markdown(result: dict) -> str:
    m = result["meta"]
    lines = [f"Super-resolution x{m['factor']} of {m['n']} test images: PSNR and consistency in [0, 1] units "
             f"(consistency: RMSE of the pooled output to the input); class accuracy in the feature classifier; "
             f"FD against the test split (real-vs-real floor {m['fd_floor']:.3f} +- {m['fd_floor_err']:.3f}); "
             f"diversity: mean per-pixel std over {m['diversity_samples']} outputs of each of {m['diversity_inputs']} "
             f"inputs, and the PSNR of their mean.", "",
             "| method | NFE | PSNR (dB) | consistency | class accuracy | FD | diversity | PSNR of the mean | s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        psnr = "-" if not np.isfinite(r["psnr"]) else f"{r['psnr']:.2f}"
        mean_psnr = "-" if not np.isfinite(r["mean_psnr"]) else f"{r['mean_psnr']:.2f}"
        lines.append(f"| {r['method']} | {r['nfe']:g} | {psnr} | {r['consistency']:.4f} | {r['accuracy']:.3f} | "
                     f"{r['fd']:.3f} +- {r['fd_err']:.3f} | {r['diversity']:.4f} | {mean_psnr} | {r['seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def super_resolution_figure(run, factor: int, *, n: int = 8, per: int = 4, sampler: str = "dpm_solver_pp_3m",
                            steps: int = 20, seed: int = 0):
    """Rows ``(input, bicubic, per samples, truth)`` of the first ``n`` test images, uint8 at the data's size
    (the input repeated: nearest neighbour)."""
    d = run.config.data
    x_true = scale(load_split(d, "test")[:n], d.levels, d.centered)
    y = pool(x_true, factor)
    x, _ = run.sample(jax.random.PRNGKey(seed), n * per, sampler, steps, cond_image=list(np.repeat(y, per, axis=0)))
    x = np.asarray(x).reshape(n, per, *x_true.shape[1:])
    bicubic = interpolation("bicubic", factor).fn(y, None)[0]
    nearest = y.repeat(factor, axis=1).repeat(factor, axis=2)
    u8 = lambda a: to_uint8(np.asarray(a), d.levels, d.centered)  # noqa: E731
    return [np.concatenate([u8(nearest[i:i + 1]), u8(bicubic[i:i + 1]), u8(x[i]), u8(x_true[i:i + 1])])
            for i in range(n)]


def methods_figure(methods: dict, data_cfg, factor: int, *, n: int = 3, per: int = 4, seed: int = 0):
    """Rows ``(input, per outputs, truth)`` of each method of ``methods`` (label -> :class:`SRMethod`) on each
    of the first ``n`` test images, uint8 at the data's size (the input repeated: nearest neighbour).
    Returns ``(rows, labels)``."""
    x_true = scale(load_split(data_cfg, "test")[:n], data_cfg.levels, data_cfg.centered)
    y = pool(x_true, factor)
    u8 = lambda a: to_uint8(np.asarray(a), data_cfg.levels, data_cfg.centered)  # noqa: E731
    key = jax.random.PRNGKey(seed)
    outputs = {label: np.asarray(m.fn(np.repeat(y, per, axis=0), key)[0]).reshape(n, per, *x_true.shape[1:])
               for label, m in methods.items()}
    rows, labels = [], []
    for i in range(n):
        for label, x in outputs.items():
            rows.append(np.concatenate([u8(y[i:i + 1].repeat(factor, 1).repeat(factor, 2)), u8(x[i]),
                                        u8(x_true[i:i + 1])]))
            labels.append(f"test {i}, {label}")
    return rows, labels


def inpainting_figure(learned, masks, *, n: int = 4, per: int = 4, sampler: str = "ancestral", steps: int = 50,
                      seed: int = 0, mask_seed: int = 0):
    """Rows ``(observed, per completions, truth)`` of the first ``n`` test images under each mask name of
    ``masks`` by a ``masked_image`` run; missing pixels shown mid-grey. Returns ``(rows, labels)``."""
    d = learned.config.data
    x_true = scale(load_split(d, "test")[:n], d.levels, d.centered)
    u8 = lambda a: to_uint8(np.asarray(a), d.levels, d.centered)  # noqa: E731
    rows, labels = [], []
    for name in masks:
        mask = named_mask(name, x_true.shape[1:], mask_seed)
        values = [(xi, mask) for xi in x_true for _ in range(per)]
        x, _ = learned.sample(jax.random.PRNGKey(seed), n * per, sampler, steps, denoise=False, masked_image=values)
        x = np.asarray(x).reshape(n, per, *x_true.shape[1:])
        for i in range(n):
            shown = learned.kind.preview((x_true[i], mask), learned.assembly.context)
            rows.append(np.concatenate([u8(shown[None]), u8(x[i]), u8(x_true[i:i + 1])]))
            labels.append(f"test {i}, {name}")
    return rows, labels


__all__ = ["INTERPOLATIONS", "SRMethod", "TRAINING_FREE", "check_model_space", "conditional_model",
           "inpainting_figure", "interpolation", "methods_figure", "super_resolution_figure",
           "super_resolution_markdown", "super_resolution_table", "training_free"]
