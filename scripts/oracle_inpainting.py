"""Inpainting methods against the exact posterior of Gaussian-mixture oracles.

    python scripts/oracle_inpainting.py [--n 2000] [--steps 100] [--out out/oracle_inpainting]

For each problem (a mixture, an observed value and a mask), every method of ``sde_lib.guidance.inpaint``
completes ``--n`` copies of the observation under the VP SDE with the exact score, and is compared with
samples of the exact posterior ``gmm.condition(mask, x_obs)``: sliced W2 on the unobserved coordinates
(beside the floor between two exact sample sets) and the share of samples nearest to each posterior
component (against the exact posterior weights; components with equal unobserved means count as
one). Problems:

* ``overlap2d``: two overlapping 2-D components, x_0 = 0.4 observed (the second component is 5x likelier);
* ``grid2d``: the 3x3 grid with unequal weights, x_0 = 0 observed (three components of the middle column);
* ``gauss16d``: the 16-D four-component mixture with the first 8 coordinates of a point of its third
  component observed.

Replacement also runs with as many steps as RePaint spends evaluations (an equal budget).
Writes oracle_inpainting.{md,csv,json} into ``--out`` (kept unless ``--overwrite``).
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np

import sde_lib
from sde_lib import cli, guidance
from sde_lib.evaluation import report
from sde_lib.metrics.distances import random_directions, sliced_wasserstein_projected
from sde_lib.oracle import GaussianMixture, builtin_mixture

METHODS = {"replace": {"sampler": "ancestral"}, "repaint": {"jump_length": 5, "jump_n_sample": 10},
           "dps": {"sampler": "ancestral", "zeta": 0.05}}


def problems():
    """``name -> (gmm, x_obs (D,), mask (D,))``."""
    overlap = GaussianMixture(jnp.array([[-0.5, -1.0], [0.5, 1.0]]), jnp.array([0.5, 0.5]), jnp.array([0.5, 0.5]))
    g16 = builtin_mixture("gauss16d")
    point = g16.means[2] + 0.4 * jax.random.normal(jax.random.PRNGKey(7), (16,))
    return {"overlap2d": (overlap, jnp.array([0.4, 0.0]), jnp.array([1.0, 0.0])),
            "grid2d": (builtin_mixture("grid2d"), jnp.array([0.0, 0.0]), jnp.array([1.0, 0.0])),
            "gauss16d": (g16, point, jnp.concatenate([jnp.ones(8), jnp.zeros(8)]))}


def _shares(x_free, post) -> tuple[list[float], list[float]]:
    """Share of samples nearest to each distinct posterior component mean, and the exact weight of each
    (components whose unobserved means coincide, e.g. a grid's column, count as one)."""
    means, group = np.unique(np.asarray(post.means).round(6), axis=0, return_inverse=True)
    weights = np.bincount(group.reshape(-1), weights=np.asarray(post.weights), minlength=len(means))
    d = ((x_free[:, None, :] - means[None]) ** 2).sum(-1)
    shares = np.bincount(np.argmin(d, axis=1), minlength=len(means)) / len(x_free)
    keep = weights > 1e-3
    return shares[keep].round(3).tolist(), weights[keep].round(3).tolist()


def main(argv=None) -> None:
    p = cli.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--steps", type=int, default=100, help="reverse steps of every method")
    p.add_argument("--out", default="out/oracle_inpainting")
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args(argv)
    with cli.exit_on_user_error():
        if a.n < 2 or a.steps < 1:
            raise ValueError(f"--n must be >= 2 and --steps >= 1, got {a.n}, {a.steps}")
        report.check_outputs([f"{a.out}/oracle_inpainting.{e}" for e in ("md", "csv", "json")], a.overwrite)
        sde = sde_lib.VPSDE()
        rows = []
        for name, (gmm, obs, mask) in problems().items():
            free = np.asarray(mask) == 0
            post = gmm.condition(mask, obs)
            exact = np.asarray(post.sample(jax.random.PRNGKey(5), a.n))  # over the unobserved coordinates
            again = np.asarray(post.sample(jax.random.PRNGKey(6), a.n))
            theta = random_directions(int(free.sum()), 64)
            floor = sliced_wasserstein_projected(exact @ theta, again @ theta)
            x_obs = jnp.tile(obs[None], (a.n, 1))
            budget = None
            for label, method, kw in [(m, m, dict(kw, steps=a.steps)) for m, kw in METHODS.items()] + [
                    ("replace, RePaint's NFE", "replace", dict(METHODS["replace"], steps=None))]:
                kw["steps"] = kw["steps"] or budget  # replacement given as many steps as RePaint's evaluations
                x, info = guidance.inpaint(sde, gmm.score_fn(sde), jax.random.PRNGKey(0), x_obs, mask, method, **kw)
                budget = int(info["nfe"]) if method == "repaint" else budget
                xf = np.asarray(x)[:, free]
                shares, weights = _shares(xf, post)
                rows.append({"problem": name, "method": label, "nfe": int(info["nfe"]),
                             "sliced_w2": sliced_wasserstein_projected(xf @ theta, exact @ theta), "floor": floor,
                             "shares": shares, "exact_weights": weights})
                print(rows[-1], flush=True)
        md = ["| problem | method | NFE | sliced W2 to the exact posterior | floor "
              "| shares of the posterior's components | exact weights |",
              "|---|---|---:|---:|---:|---|---|"]
        md += [f"| {r['problem']} | {r['method']} | {r['nfe']} | {r['sliced_w2']:.4f} | {r['floor']:.4f} | "
               f"{r['shares']} | {r['exact_weights']} |" for r in rows]
        paths = report.write_report(a.out, "oracle_inpainting", rows, "\n".join(md) + "\n", overwrite=a.overwrite)
    print("\n".join(md))
    print("wrote " + ", ".join(paths.values()))


if __name__ == "__main__":
    main()
