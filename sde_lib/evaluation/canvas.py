"""Measuring prompt adherence of canvas models (latent or pixel diffusion, captions or layouts).

For a run conditioned on captions, layouts, pooled captions, or nothing, :func:`evaluate_run` draws
``per_prompt`` samples for each of ``n_prompts`` conditions of three kinds, taken from the canvas test
split (whose objects no model saw):

* **seen**: captions whose (class, class, relation) combination appears in training;
* **binding**: the order-swapped versions of seen two-object captions ("a 7 left of a 3" for "a 3 left
  of a 7"), kept only where the swapped combination was seen too: right words, wrong order fails;
* **composition**: captions of the held-out combinations (no training canvas shows them);

and scores each sample with the slot evaluator (``metrics.canvas``): the share that shows exactly its
caption. FD / KID compare the seen-prompt samples with as many real test canvases in the evaluator's
features. A layout run gets each caption's boxes (binding: the two boxes' classes swapped); an
unconditional run gets no condition (chance level). :func:`autoencoder_quality` gives the first stage's
PSNR and the evaluator's slot accuracy and adherence on reconstructions, the ceiling of latent models.
"""

from __future__ import annotations

import time

import jax
import numpy as np

from sde_lib.data import canvas as canvas_data
from sde_lib.data.scaling import scale
from sde_lib.metrics import distances


def prompt_sets(name: str, n_prompts: int, seed: int = 0) -> dict[str, list[tuple[str, np.ndarray]]]:
    """``{"seen" | "binding" | "composition": [(caption, layout (2, 5)), ...]}`` from the test split."""
    spec = canvas_data.SPECS[name]
    _, captions, layouts = canvas_data.canvases(name, "test")
    hidden = canvas_data.held_out(spec)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(captions))
    out = {"seen": [], "binding": [], "composition": []}
    used = {k: set() for k in out}
    for i in order:
        cap, lay = captions[i], layouts[i]
        rel = canvas_data.relation_of(cap, spec)
        if rel in hidden:
            kind, item = "composition", (cap, lay)
        else:
            kind, item = "seen", (cap, lay)
            swap = canvas_data.swapped(cap, spec)
            if swap is not None and canvas_data.relation_of(swap, spec) not in hidden and rel[0] != rel[1]:
                swapped_layout = lay.copy()
                swapped_layout[[0, 1], 0] = lay[[1, 0], 0]
                if len(out["binding"]) < n_prompts and swap not in used["binding"]:
                    out["binding"].append((swap, swapped_layout))
                    used["binding"].add(swap)
        if len(out[kind]) < n_prompts and item[0] not in used[kind]:
            out[kind].append(item)
            used[kind].add(item[0])
    return out


def _condition(run, items, per_prompt: int):
    """``Run.sample``'s condition keyword for ``items`` [(caption, layout)]: captions for a caption run,
    boxes for a layout run, nothing for an unconditional one."""
    kind = None if run.kind is None else run.kind.name
    if kind == "caption":
        return {"condition": [c for c, _ in items for _ in range(per_prompt)]}
    if kind == "layout":
        return {"condition": np.repeat(np.stack([lay for _, lay in items]), per_prompt, axis=0)}
    if kind is not None:
        raise ValueError(f"{run.workdir}: canvas prompts need a caption or layout run, not condition.kind={kind!r}")
    return {}


def evaluate_run(run, evaluator, *, n_prompts: int = 40, per_prompt: int = 5, guidance: float | None = 3.0,
                 sampler: str = "dpm_solver_pp_3m", steps: int = 20, seed: int = 0, canvas: str | None = None) -> dict:
    """Adherence per prompt set, FD / KID, NFE and sampling time of one run (module docstring). ``canvas``:
    the canvas data set the run's images are (default: its ``data.dataset``; a run trained on the files of
    ``scripts/export_canvas.py`` names it here)."""
    name = canvas or run.config.data.dataset
    sets = prompt_sets(name, n_prompts, seed)
    key = jax.random.PRNGKey(seed)
    out = {"sampler": sampler, "steps": steps, "guidance": guidance}
    seen_samples = None
    for kind, items in sets.items():
        cond = _condition(run, items, per_prompt)
        n = len(items) * per_prompt
        t = time.perf_counter()
        x, info = run.sample(key, n, sampler, steps, guidance=guidance if cond else None, **cond)
        out[f"{kind}_seconds"] = time.perf_counter() - t
        captions = [c for c, _ in items for _ in range(per_prompt)]
        out[kind] = float(np.mean(evaluator.adherence(np.asarray(x), captions)))
        out[f"{kind}_n"] = n
        out["nfe"] = float(np.mean(np.asarray(info["nfe"])))
        if kind == "seen":
            seen_samples = np.asarray(x)
    real, _, _ = canvas_data.canvases(name, "test")
    real = real[np.random.default_rng(seed + 1).permutation(len(real))[: len(seen_samples)]]
    f_s, f_r = evaluator.features(seen_samples), evaluator.features(real)
    out["fd"] = distances.frechet_from_stats(*distances.gaussian_stats(f_r), *distances.gaussian_stats(f_s))
    out["kid"] = distances.kid(f_r, f_s, num_subsets=20, subset_size=len(f_s) // 2, seed=seed)[0]
    return out


def real_ceiling(name: str, evaluator, n_prompts: int = 40, seed: int = 0) -> dict:
    """The evaluator on real test canvases of each prompt set (the ceiling of adherence), and the FD / KID
    floor between two disjoint sets of real test canvases."""
    x, captions, _ = canvas_data.canvases(name, "test")
    sets = prompt_sets(name, n_prompts, seed)
    out = {}
    for kind in ("seen", "composition"):
        wanted = {c for c, _ in sets[kind]}
        rows = [i for i, c in enumerate(captions) if c in wanted]
        out[kind] = float(np.mean(evaluator.adherence(x[rows], [captions[i] for i in rows])))
    perm = np.random.default_rng(seed).permutation(len(x))
    half = len(x) // 2
    f_a, f_b = evaluator.features(x[perm[:half]]), evaluator.features(x[perm[half:2 * half]])
    out["fd"] = distances.frechet_from_stats(*distances.gaussian_stats(f_a), *distances.gaussian_stats(f_b))
    out["kid"] = distances.kid(f_a, f_b, num_subsets=20, subset_size=half // 2, seed=seed)[0]
    return out


def autoencoder_quality(first_stage, name: str, evaluator, n: int = 1000, n_fd: int = 200, seed: int = 0) -> dict:
    """PSNR (images in [0, 1]) of mean-latent reconstructions of test canvases, the evaluator's slot accuracy
    and adherence on them and on the originals, and the FD / KID of ``n_fd`` reconstructions against as many
    other real test canvases (the floor latent samples can reach; the same sizes as :func:`evaluate_run`'s).

    A first stage trained on the 8-bit files of ``scripts/export_canvas.py`` gets the canvases as those files
    hold them (levels spread over 0..255)."""
    spec = canvas_data.SPECS[name]
    x, captions, layouts = canvas_data.canvases(name, "test")
    levels = first_stage.config.data.levels

    def model_space(images):
        if levels == spec.levels:
            return scale(images, spec.levels, centered=True)
        return scale(np.round(images * 255.0 / (spec.levels - 1)).astype(np.int64), 256, centered=True)

    def reconstruct(images):
        z = model_space(images)
        return np.concatenate([np.asarray(first_stage.decode(first_stage.encode(z[i:i + 250])))
                               for i in range(0, len(z), 250)])

    recon = reconstruct(x[:n])
    u, ur = (model_space(x[:n]) + 1) / 2, np.clip((recon + 1) / 2, 0, 1)
    mse = np.mean((u - ur) ** 2, axis=(1, 2, 3))
    truth = canvas_data.slot_labels(layouts[:n])
    perm = np.random.default_rng(seed + 1).permutation(len(x))
    f_real = evaluator.features(x[perm[:n_fd]])
    f_recon = evaluator.features(reconstruct(x[perm[n_fd:2 * n_fd]]))
    return {"psnr": float(np.mean(10 * np.log10(1.0 / np.maximum(mse, 1e-12)))),
            "slot_accuracy_real": float(np.mean(evaluator.slots(x[:n]) == truth)),
            "slot_accuracy_recon": float(np.mean(evaluator.slots(recon) == truth)),
            "adherence_real": float(np.mean(evaluator.adherence(x[:n], captions[:n]))),
            "adherence_recon": float(np.mean(evaluator.adherence(recon, captions[:n]))),
            "fd_recon": distances.frechet_from_stats(*distances.gaussian_stats(f_real),
                                                     *distances.gaussian_stats(f_recon)),
            "kid_recon": distances.kid(f_real, f_recon, num_subsets=20, subset_size=n_fd // 2, seed=seed)[0]}
