"""Measuring conditional generation on a labelled image data set (digits, Fashion-MNIST).

* :func:`guidance_table`: for each sampler and guidance scale, ``n`` samples per class of a
  class-conditional run (classifier-free guidance; or classifier guidance with a noise-conditional
  classifier run), scored by the data set's feature classifier (``metrics.classifier``): the accuracy
  of the generated class (does the classifier see the class asked for?) and FD / KID against the test
  split, beside their real-data values (the test images' own accuracy; the held-out floor).
* :func:`inpainting_table`: test images with a mask (left half, centre box, random half of the pixels)
  completed by each inpainting method at several NFE (and by a learned inpainting run), scored by the
  classifier's agreement between the completed image's class and the true one (the observed part alone
  is ambiguous) and by FD.
* :func:`conditional_bpd`: log p(x | y) and log p(x) of the same run through the PF-ODE, in bits/dim,
  against the bound log2(C) / D on their mean gap (the mutual information I(x; y) <= H(y)).

All randomness is fixed by ``seed``; every row of a table starts from the same prior draws.
"""

from __future__ import annotations

import math
import time

import jax
import numpy as np

from sde_lib import guidance, sampling
from sde_lib.conditioning.images import named_mask
from sde_lib.data import load_labels, load_split, scale, to_uint8
from sde_lib.metrics import evaluate_samples, get_classifier, reference
from sde_lib.metrics.reference import image_spec, real_sets

MASKS = ("left_half", "centre_box", "random_half")


def make_mask(kind: str, dims: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """A 0/1 mask of an image ``(H, W, C)``: 1 where observed. ``left_half`` observes the left columns,
    ``centre_box`` everything but the central half-size box, ``random_half`` a seeded half of the pixels:
    the named masks an inpainting run takes (``sde_lib.conditioning.images.named_mask``)."""
    if kind not in MASKS:
        raise ValueError(f"mask must be one of {MASKS}, got {kind!r}")
    return named_mask(kind, dims, seed)


def guidance_table(run, scales, samplers, *, n_per_class: int = 36, steps: int = 20, seed: int = 0,
                   classifier_run=None, classifier_scales=(), cache_dir: str | None = None) -> dict:
    """Rows ``{sampler, guidance ("cfg" | "classifier"), scale, nfe, accuracy, fd, fd_err, kid, kid_err}``
    and ``meta`` (floors, the classifier's test accuracy). Uses ``run``'s config for the data."""
    data_cfg = run.config.data
    clf = get_classifier(data_cfg, cache_dir=cache_dir)
    classes = np.repeat(np.arange(run.num_classes), n_per_class)
    n = len(classes)
    sets = real_sets(image_spec(data_cfg))
    m = min(n, len(sets.test), len(sets.held))
    key = jax.random.PRNGKey(seed)
    x_init = run.sde.prior_sampling(jax.random.fold_in(key, 1), (n, *run.dims))
    rows, meta = [], {"classifier_accuracy": clf.accuracy, "n": n, "metric_n": m}

    def score(x, name, kind, scale_, nfe, seconds):
        pred = clf.predict(np.asarray(x))
        # Metrics on a class-balanced subset of m samples (the first m of a random order).
        order = np.random.default_rng(seed).permutation(n)[:m]
        r = evaluate_samples(np.asarray(x)[order], data_cfg, n=m, seed=seed, classifier=clf)
        meta.update({f"{k}_floor": r[f"{k}_floor"] for k in ("fd", "kid")})
        meta.update({f"{k}_floor_err": r[f"{k}_floor_err"] for k in ("fd", "kid")})
        rows.append({"sampler": name, "guidance": kind, "scale": scale_, "nfe": nfe,
                     "accuracy": float(np.mean(pred == classes)), "fd": r["fd"], "fd_err": r["fd_err"],
                     "kid": r["kid"], "kid_err": r["kid_err"], "seconds": seconds})

    cond = run.condition(classes, n)
    for name in samplers:
        for w in scales:
            t = time.perf_counter()
            x, info = run.sample(key, n, name, steps, cond=cond, guidance=float(w), x_init=x_init)
            score(x, name, "cfg", float(w), float(np.mean(np.asarray(info["nfe"]))), time.perf_counter() - t)
        if classifier_run is not None:
            for w in classifier_scales:
                guided = guidance.classifier(lambda x_, t_: run.score_fn(x_, t_), classifier_run.log_prob_fn,
                                             float(w))
                t = time.perf_counter()
                x, info = _sample_with(run, guided, key, n, name, steps, cond, x_init)
                score(x, name, "classifier", float(w), float(np.mean(np.asarray(info["nfe"]))),
                      time.perf_counter() - t)
    test_pred = clf.predict(sets.test)
    meta["real_accuracy"] = float(np.mean(test_pred == sets.test_labels))
    return {"rows": rows, "meta": meta}


def _sample_with(run, score_fn, key, n, sampler, steps, cond, x_init):
    s = run.config.sampling
    return sampling.sample(run.sde, score_fn, key, (n, *run.dims), sampler=sampler, steps=steps, x_init=x_init,
                           cond=cond, eps=s.eps, denoise=s.denoise)


def inpainting_table(run, methods, nfes, *, masks=MASKS, n: int = 200, seed: int = 0,
                     cache_dir: str | None = None, learned=None, learned_sampler: str = "ancestral",
                     learned_guidance=(None,)) -> dict:
    """Rows ``{mask, method, nfe, agreement, fd, fd_err, observed_rmse}``: agreement: the classifier's class of
    the completed image equals the true class; FD of the completions in the classifier's features against the
    test split; observed_rmse: the completions' RMSE to the truth on the observed pixels (in [0, 1] units).
    ``meta`` has the classifier's accuracy on the full test images (the ceiling) and on the observed part
    alone (masked pixels set to the background, the floor), the FD floor and the truth's own FD.

    ``learned``: an inpainting run (``condition.kind='masked_image'``) measured on the same images and masks
    (method ``"learned"``), sampled by ``learned_sampler`` with as many steps as each NFE budget, as it is
    (None in ``learned_guidance``) and with classifier-free guidance at each other scale (one NFE: one
    network call on the doubled batch)."""
    data_cfg = run.config.data
    d = run.config.data
    clf = get_classifier(data_cfg, cache_dir=cache_dir)
    levels = load_split(d, "test")[:n]
    labels = load_labels(d, "test")[:n]
    x_true = scale(levels, d.levels, d.centered)
    truth = evaluate_samples(levels, data_cfg, n=n, seed=seed, classifier=clf)
    rows, meta = [], {"ceiling": float(np.mean(clf.predict(levels) == labels)), "n": n, "fd_truth": truth["fd"],
                      "fd_truth_err": truth["fd_err"], "fd_floor": truth["fd_floor"],
                      "fd_floor_err": truth["fd_floor_err"], "learned": None if learned is None else learned.workdir}
    background = -1.0 if d.centered else 0.0
    unit = lambda a: reference.to_unit(np.asarray(a), reference.image_spec(data_cfg))  # noqa: E731

    def score(kind, method, nfe, x, mask):
        r = evaluate_samples(np.asarray(x), data_cfg, n=n, seed=seed, classifier=clf)
        err = (unit(x) - unit(levels)) * mask
        return {"mask": kind, "method": method, "nfe": int(nfe),
                "agreement": float(np.mean(clf.predict(np.asarray(x)) == labels)), "fd": r["fd"],
                "fd_err": r["fd_err"], "observed_rmse": float(np.sqrt(np.sum(err**2) / (len(x) * np.sum(mask))))}

    for kind in masks:
        mask = make_mask(kind, x_true.shape[1:], seed)
        alone = np.where(mask > 0, x_true, background)
        meta[f"observed_only_{kind}"] = float(np.mean(clf.predict(alone.astype(np.float32)) == labels))
        for method in methods:
            for nfe in nfes:
                steps = nfe if method != "dps" else max(1, nfe // 2)
                kw = {"sampler": "ancestral"} if method != "repaint" else {"jump_length": 5, "jump_n_sample": 2}
                if method == "repaint":
                    steps = repaint_steps(nfe, 5, 2)
                x, info = guidance.inpaint(run.sde, run.score_fn, jax.random.PRNGKey(seed), x_true, mask, method,
                                           steps=steps, **kw)
                rows.append(score(kind, method, info["nfe"], x, mask))
        for w in learned_guidance if learned is not None else ():
            for nfe in nfes:
                x, info = learned.sample(jax.random.PRNGKey(seed), n, learned_sampler, nfe, denoise=False,
                                         masked_image=[(xi, mask) for xi in x_true], guidance=w)
                name = "learned" if w is None else f"learned, guidance {w:g}"
                rows.append(score(kind, name, np.mean(np.asarray(info["nfe"])), x, mask))
    return {"rows": rows, "meta": meta}


def inpainting_markdown(result: dict, model: str) -> str:
    """The inpainting table of :func:`inpainting_table`'s ``result`` (``model``: the run of the training-free
    methods) with its caption."""
    t = result["meta"]
    floors = ", ".join(f"{k.removeprefix('observed_only_')} {v:.3f}" for k, v in t.items()
                       if k.startswith("observed_only_"))
    learned = f"; method learned: {t['learned']}" if t.get("learned") else ""
    lines = [f"Inpainting ({t['n']} test images, model {model}{learned}): classifier agreement with the true class; "
             f"full images {t['ceiling']:.3f}, observed part alone: {floors}. FD in the classifier's features "
             f"against the test split: the truth {t['fd_truth']:.3f} +- {t['fd_truth_err']:.3f}, real-vs-real floor "
             f"{t['fd_floor']:.3f} +- {t['fd_floor_err']:.3f}; observed RMSE in [0, 1] units.", "",
             "| mask | method | NFE | agreement | FD | observed RMSE |", "|---|---|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['mask']} | {r['method']} | {r['nfe']} | {r['agreement']:.3f} | {r['fd']:.3f} +- "
                     f"{r['fd_err']:.3f} | {r['observed_rmse']:.4f} |")
    return "\n".join(lines) + "\n"


def repaint_steps(nfe: int, jump_length: int, jump_n_sample: int) -> int:
    """The largest number of reverse steps whose RePaint walk costs at most ``nfe`` evaluations."""
    best = 1
    for steps in range(1, nfe + 1):
        if int(np.sum(np.diff(guidance.repaint_schedule(steps, jump_length, jump_n_sample)) > 0)) <= nfe:
            best = steps
    return best


def conditional_bpd(run, *, num: int | None = None, seed: int = 0) -> dict:
    """Bits/dim of log p(x | y) and of log p(x) (the null branch) on the test split, and the bound."""
    cond = run.bpd(num=num, seed=seed, conditional=True)
    uncond = run.bpd(num=num, seed=seed)
    dim = math.prod(run.dims)
    return {"conditional": cond, "unconditional": uncond, "gap": uncond["bpd"] - cond["bpd"],
            "bound": math.log2(run.num_classes) / dim}


def inpainting_figure(run, kind: str, method: str, steps: int, n: int = 8, per: int = 4, seed: int = 0):
    """Rows for a picture: the observed image, ``per`` completions, and the truth, for ``n`` test images."""
    d = run.config.data
    levels = load_split(d, "test")[:n]
    x_true = scale(levels, d.levels, d.centered)
    mask = make_mask(kind, x_true.shape[1:], seed)
    tiled = np.repeat(x_true, per, axis=0)
    x, _ = guidance.inpaint(run.sde, run.score_fn, jax.random.PRNGKey(seed), tiled, mask, method, steps=steps,
                            **({"sampler": "ancestral"} if method != "repaint" else {}))
    x = np.asarray(x).reshape(n, per, *x_true.shape[1:])
    background = -1.0 if d.centered else 0.0
    observed = np.where(mask > 0, x_true, background)
    u8 = lambda a: to_uint8(np.asarray(a), d.levels, d.centered)  # noqa: E731
    return [np.concatenate([u8(observed[i:i + 1]), u8(x[i]), u8(x_true[i:i + 1])]) for i in range(n)]


def cfg_guided_samples(run, label: int, scale_: float, n: int, sampler: str, steps: int, seed: int = 0):
    """``n`` samples of class ``label`` with classifier-free guidance ``scale_`` as uint8 images."""
    x, _ = run.sample(jax.random.PRNGKey(seed), n, sampler, steps, label=label, guidance=scale_)
    d = run.config.data
    return to_uint8(np.asarray(x), d.levels, d.centered)


__all__ = ["MASKS", "conditional_bpd", "guidance_table", "inpainting_figure", "inpainting_markdown", "inpainting_table",
           "make_mask", "repaint_steps",
           "cfg_guided_samples"]
