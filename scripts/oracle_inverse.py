"""Linear inverse problems against the exact posterior of Gaussian-mixture oracles.

    python scripts/oracle_inverse.py [--n 2000] [--steps 100] [--zeta 0.2] [--out out/oracle_inverse]

For each problem (a mixture with image-shaped examples, a linear operator A and a measurement
y = A x + N(0, s^2 I)), every method of ``sde_lib.guidance.linear_inverse`` draws ``--n`` samples given y
under the VP SDE with the exact score, and is compared with samples of the exact posterior
``gmm.posterior(A, y, s)``: sliced W2 over all coordinates (beside the floor between two exact sample
sets; 64 directions), the component shares (the mean over samples of p(k | x), whose exact value is the
posterior weight p(k | y)), and the measurement residual RMS(A x - y) (the exact posterior's beside it).
The prior's own samples (no measurement) are listed as the reference of a method that ignores y.
Problems (s = 0.05 everywhere):

* ``overlap2d/avgpool``: two overlapping 2-D components, the mean of the two coordinates measured
  (``AvgPool((1, 2))`` on a 1x2 image): the components' lines cross, both stay likely;
* ``grid2d/avgpool``: the 3x3 grid, mean of the two coordinates = 0: three modes on the anti-diagonal;
* ``gauss16d/avgpool``: the 16-D four-component mixture as 4x4 images, 2x2 average pooling to 2x2 (a
  4x super-resolution), y the pooled midpoint of the last two components' means: two stay likely;
* ``gauss16d/blur``: the same images blurred by a 3x3 binomial kernel (periodic boundary, so the
  highest frequency is lost), y between the second and fourth components;
* ``gauss16d/grey``: the same mixture as 2x4 images with 2 channels, mixed to one by (0.6, 0.4)
  ("colourisation"), y between the second and third components.

Methods (the ancestral sampler, ``--steps``, unless named): replacement by projection, RePaint (jump
length 5, 10 resamplings), DPS (``--zeta``), ΠGDM with the paper's unit data scale and with ``data_std``
0.5 (nearer the components' own spread), the latter also with DPM-Solver++(2M) in 30 steps.

Writes oracle_inverse.{md,csv,json} into ``--out`` (kept unless ``--overwrite``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import sde_lib
from sde_lib import cli, guidance, operators
from sde_lib.evaluation import report
from sde_lib.metrics.distances import random_directions, sliced_wasserstein_projected
from sde_lib.oracle import GaussianMixture, builtin_mixture

NOISE_STD = 0.05


def problems():
    """``name -> (gmm, dims, operator, y (*meas_dims))`` with y = A x for a chosen x (noise added in ``main``)."""
    overlap = GaussianMixture(jnp.array([[-0.5, -1.0], [0.5, 1.0]]), jnp.array([0.5, 0.5]), jnp.array([0.5, 0.5]))
    g16 = builtin_mixture("gauss16d")
    mu = g16.means
    pool, blur = operators.AvgPool(2), operators.Blur(jnp.array([0.25, 0.5, 0.25]))
    grey = operators.ChannelMix(jnp.array([[0.6, 0.4]]))
    out = {"overlap2d/avgpool": (overlap, (1, 2, 1), operators.AvgPool((1, 2)), jnp.array([0.3, 0.1])),
           "grid2d/avgpool": (builtin_mixture("grid2d"), (1, 2, 1), operators.AvgPool((1, 2)), jnp.array([0.0, 0.0])),
           "gauss16d/avgpool": (g16, (4, 4, 1), pool, 0.5 * (mu[2] + mu[3])),
           "gauss16d/blur": (g16, (4, 4, 1), blur, 0.55 * mu[1] + 0.45 * mu[3]),
           "gauss16d/grey": (g16, (2, 4, 2), grey, 0.5 * (mu[1] + mu[2]))}
    return {name: (gmm, dims, op, op.A(x.reshape((1,) + dims))[0]) for name, (gmm, dims, op, x) in out.items()}


def compare(x, gmm, post, exact, theta, op, y):
    """Sliced W2 to ``exact``, component shares, residual RMS of samples ``x`` ``(n, *dims)``."""
    flat = np.asarray(x).reshape(len(x), -1)
    resid = np.asarray(op.A(jnp.asarray(x))).reshape(len(x), -1) - np.asarray(y).reshape(1, -1)
    return {"sliced_w2": sliced_wasserstein_projected(flat @ theta, exact @ theta),
            "shares": np.asarray(gmm.component_probs(jnp.asarray(flat)), np.float64).mean(0).round(3).tolist(),
            "residual": float(np.sqrt(np.mean(resid**2)))}


def main(argv=None) -> None:
    p = cli.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--steps", type=int, default=100, help="reverse steps of every method")
    p.add_argument("--zeta", type=float, default=0.2, help="DPS's step size")
    p.add_argument("--out", default="out/oracle_inverse")
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args(argv)
    with cli.exit_on_user_error():
        if a.n < 2 or a.steps < 1:
            raise ValueError(f"--n must be >= 2 and --steps >= 1, got {a.n}, {a.steps}")
        report.check_outputs([f"{a.out}/oracle_inverse.{e}" for e in ("md", "csv", "json")], a.overwrite)
        sde = sde_lib.VPSDE()
        runs = {"replace": ("replace", {}), "repaint": ("repaint", {"jump_length": 5, "jump_n_sample": 10}),
                f"dps, zeta {a.zeta}": ("dps", {"zeta": a.zeta}), "pigdm": ("pigdm", {}),
                "pigdm, data_std 0.5": ("pigdm", {"data_std": 0.5}),
                "pigdm, data_std 0.5, DPM-Solver++(2M) 30 steps": ("pigdm", {"data_std": 0.5, "steps": 30,
                                                                             "sampler": "dpm_solver_pp_2m"})}
        rows = []
        for name, (gmm, dims, op, y_clean) in problems().items():
            y = y_clean + NOISE_STD * jax.random.normal(jax.random.PRNGKey(3), y_clean.shape)
            matrix = op.as_matrix(dims)
            post = gmm.posterior(matrix, y.reshape(-1), NOISE_STD)
            exact = np.asarray(post.sample(jax.random.PRNGKey(5), a.n))
            again = np.asarray(post.sample(jax.random.PRNGKey(6), a.n))
            theta = random_directions(gmm.dim, 64)
            base = {"problem": name, "floor": sliced_wasserstein_projected(exact @ theta, again @ theta),
                    "exact_weights": np.asarray(post.weights, np.float64).round(3).tolist(),
                    "exact_residual": compare(again.reshape((a.n,) + dims), gmm, post, exact, theta, op, y)["residual"]}
            ys = jnp.tile(y[None], (a.n,) + (1,) * y.ndim)
            for label, (method, kw) in list(runs.items()) + [("prior (ignores y)", (None, {}))]:
                if method is None:
                    x, nfe = np.asarray(gmm.sample(jax.random.PRNGKey(0), a.n)).reshape((a.n,) + dims), 0
                else:
                    x, info = guidance.linear_inverse(sde, gmm.score_fn(sde), jax.random.PRNGKey(0), ys, op, method,
                                                      noise_std=NOISE_STD, **{"steps": a.steps, **kw})
                    nfe = int(info["nfe"])
                rows.append({**base, "method": label, "nfe": nfe, **compare(x, gmm, post, exact, theta, op, y)})
                print(rows[-1], flush=True)
        md = ["| problem | method | NFE | sliced W2 to the exact posterior | floor | component shares | exact weights "
              "| RMS(A x - y) | exact's |",
              "|---|---|---:|---:|---:|---|---|---:|---:|"]
        md += [f"| {r['problem']} | {r['method']} | {r['nfe']} | {r['sliced_w2']:.4f} | {r['floor']:.4f} | "
               f"{_nonzero(r['shares'], r['exact_weights'])} | {_nonzero(r['exact_weights'], r['exact_weights'])} | "
               f"{r['residual']:.4f} | {r['exact_residual']:.4f} |" for r in rows]
        paths = report.write_report(a.out, "oracle_inverse", rows, "\n".join(md) + "\n", overwrite=a.overwrite)
    print("\n".join(md))
    print("wrote " + ", ".join(paths.values()))


def _nonzero(values, weights) -> list[float]:
    """``values`` at the components whose exact weight is above 0.01 (the table's columns stay short)."""
    return [v for v, w in zip(values, weights) if w > 0.01]


if __name__ == "__main__":
    main()
