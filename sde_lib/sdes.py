"""Linear forward SDEs dx = f(t) x dt + g(t) dW on t in [0, T] (Song et al. 2021, arXiv 2011.13456), and the
Gaussian paths of flow matching written as such SDEs.

Every process here has a Gaussian perturbation kernel

    x_t | x_0 ~ N(alpha_t x_0, sigma_t^2 I),

so the library can be written once in terms of (alpha_t, sigma_t) and their derived quantities:

* the half log-SNR  lambda_t = log(alpha_t / sigma_t)  (exponential integrators, logSNR grids);
* the EDM noise level  sigma(t) = sigma_t / alpha_t = exp(-lambda_t)  (Karras et al. 2022), in which the
  scaled variable x / alpha_t follows the variance-exploding ODE dx/dsigma = -sigma * score;
* the velocity  dx_t/dt = alpha'_t x_0 + sigma'_t z  of the interpolation, whose conditional mean given
  x_t is the probability-flow drift f x - g^2 score / 2 (flow matching's regression target).

Conversely any differentiable (alpha_t, sigma_t) with decreasing lambda_t is such an SDE (Kingma et al.
2021, arXiv 2107.00630, app.; Kingma & Gao 2023, arXiv 2303.00848):

    f = d log alpha_t / dt,        g^2 = d sigma_t^2 / dt - 2 f sigma_t^2 = -2 sigma_t^2 d lambda_t / dt.

:class:`GaussianPath` builds the SDE from a path that way: :class:`LinearPath` (rectified flow and
conditional flow matching, alpha_t = 1 - t, sigma_t = t), :class:`CosinePath` and :class:`EDMPath`
(sigma(t) = t). Where alpha_t reaches 0 (the linear and cosine paths at t = 1) the path's law is exactly
N(0, I), but the score there is -x whatever the data: it carries no information, f and g are infinite,
and no solve can start there, so those paths stop at T = 1 - 1e-3 (where lambda_T is below VP's).

Shapes: ``x`` is ``(B, *dims)``; ``t`` is ``(B,)`` (a scalar broadcasts); per-example coefficients are
``(B,)`` and broadcast over ``dims``.
"""

from __future__ import annotations

import abc
import math

import equinox as eqx
import jax
import jax.numpy as jnp

from sde_lib.checks import integer, real


def batch_broadcast(c: jax.Array, x: jax.Array) -> jax.Array:
    """Reshape per-example coefficients ``c`` of shape ``(B,)`` (or a scalar) to broadcast against ``x``."""
    c = jnp.asarray(c)
    return c.reshape(c.shape + (1,) * (x.ndim - c.ndim))


def per_sample_keys(key: jax.Array, n: int) -> jax.Array:
    """``n`` keys where key ``i`` depends only on ``(key, i)``: row ``i`` of a batch never depends on ``n``."""
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n))


def standard_normal(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    """Standard normal draws of ``shape = (B, *dims)`` with row ``i`` a function of ``(key, i)`` only."""
    keys = per_sample_keys(key, shape[0])
    return jax.vmap(lambda k: jax.random.normal(k, shape[1:], dtype))(keys)


class SDE(eqx.Module):
    """A linear SDE dx = f(t) x dt + g(t) dW with marginal x_t = alpha_t x_0 + sigma_t z.

    Subclasses define the scalar functions ``drift_coef`` f(t), ``diffusion_coef`` g(t),
    ``marginal_coeffs`` (alpha_t, sigma_t), the EDM noise level ``sigma`` and its inverse, and the prior.

    SDEs are immutable ``equinox.Module`` s whose parameters are static fields: two SDEs with equal
    parameters are equal and hash alike, so a jitted sampler or likelihood compiled for one is reused
    for the other (e.g. the SDE rebuilt from each checkpoint's config).
    """

    N: int = eqx.field(static=True)
    T: float = eqx.field(static=True, default=1.0, kw_only=True)

    def __check_init__(self):
        if int(self.N) < 1:
            raise ValueError(f"N (number of discretisation steps) must be >= 1, got {self.N}")

    # ----------------------------------------------------------------- scalar coefficient functions
    @abc.abstractmethod
    def drift_coef(self, t: jax.Array) -> jax.Array:
        """f(t) of shape ``t.shape``: the drift is f(t) * x."""

    @abc.abstractmethod
    def diffusion_coef(self, t: jax.Array) -> jax.Array:
        """g(t) of shape ``t.shape``."""

    @abc.abstractmethod
    def marginal_coeffs(self, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(alpha_t, sigma_t), each of shape ``t.shape``: x_t = alpha_t x_0 + sigma_t z."""

    @abc.abstractmethod
    def sigma(self, t: jax.Array) -> jax.Array:
        """EDM noise level sigma(t) = sigma_t / alpha_t, increasing in t."""

    @abc.abstractmethod
    def t_from_sigma(self, sigma: jax.Array) -> jax.Array:
        """Inverse of :meth:`sigma`."""

    @property
    @abc.abstractmethod
    def prior_std(self) -> float:
        """Standard deviation of the isotropic Gaussian prior at t = T."""

    @property
    def is_vp_type(self) -> bool:
        """True where alpha_t < 1 carries the signal (VP, sub-VP, the linear and cosine paths); False where
        alpha_t = 1 (VE, the EDM path)."""
        return True

    @property
    def default_eps(self) -> float:
        """The samplers' default end time: score_sde's 1e-3 where alpha_t < 1 carries the signal, 1e-5 for VE."""
        return 1e-3 if self.is_vp_type else 1e-5

    def marginal_rates(self, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(d alpha_t / dt, d sigma_t / dt), each of shape ``t.shape``: the velocity of x_t = alpha_t x_0 + sigma_t z
        is alpha'_t x_0 + sigma'_t z. From f and g: alpha' = f alpha, sigma' = (g^2 / 2 + f sigma^2) / sigma."""
        alpha, sigma = self.marginal_coeffs(t)
        f, g2 = self.drift_coef(t), self.diffusion_coef(t) ** 2
        return f * alpha, (0.5 * g2 + f * sigma**2) / sigma

    # -------------------------------------------------------------------------- derived quantities
    def half_log_snr(self, t: jax.Array) -> jax.Array:
        """lambda_t = log(alpha_t / sigma_t) = -log sigma(t), decreasing in t."""
        return -jnp.log(self.sigma(t))

    def t_from_half_log_snr(self, lam: jax.Array) -> jax.Array:
        """Inverse of :meth:`half_log_snr`."""
        return self.t_from_sigma(jnp.exp(-lam))

    def reverse_drift(self, x: jax.Array, t: jax.Array, score: jax.Array, probability_flow: bool = True) -> jax.Array:
        """f(t) x - c g(t)^2 score with c = 1/2 (probability-flow ODE) or 1 (reverse SDE).

        ``t`` is a scalar or ``(B,)``; ``x`` and ``score`` are ``(B, *dims)``. The one home of the
        reverse-time drift: samplers, the likelihood's augmented field and ``ReverseSDE`` call it.
        """
        c = 0.5 if probability_flow else 1.0
        f = batch_broadcast(self.drift_coef(t), x)
        g2 = batch_broadcast(self.diffusion_coef(t) ** 2, x)
        return f * x - c * g2 * score

    # ----------------------------------------------------------------------- score_sde's interface
    def sde(self, x: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Forward drift f(t) x of shape ``x.shape`` and diffusion g(t) of shape ``(B,)``."""
        t = jnp.broadcast_to(t, x.shape[:1])
        return batch_broadcast(self.drift_coef(t), x) * x, self.diffusion_coef(t)

    def marginal_prob(self, x0: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Mean alpha_t x_0 (shape ``x0.shape``) and std sigma_t (shape ``(B,)``) of p_t(x | x_0)."""
        t = jnp.broadcast_to(t, x0.shape[:1])
        alpha, std = self.marginal_coeffs(t)
        return batch_broadcast(alpha, x0) * x0, std

    def prior_sampling(self, key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        """Draw ``shape = (B, *dims)`` from the prior N(0, prior_std^2 I); row i depends on (key, i) only."""
        return self.prior_std * standard_normal(key, tuple(shape))

    def prior_logp(self, z: jax.Array) -> jax.Array:
        """Exact log-density of the prior at ``z`` of shape ``(B, *dims)``, summed over dims -> ``(B,)``."""
        d = math.prod(z.shape[1:])
        s2 = self.prior_std**2
        sq = jnp.sum(z.reshape(z.shape[0], -1) ** 2, axis=-1)
        return -0.5 * d * jnp.log(2 * jnp.pi * s2) - 0.5 * sq / s2

    def discretize(self, x: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        """One step x_{i+1} = x_i + f_i + G_i z of the N-step discretisation (Euler-Maruyama here).

        Returns f of shape ``x.shape`` and G of shape ``(B,)``.
        """
        dt = self.T / self.N
        drift, diffusion = self.sde(x, t)
        return drift * dt, diffusion * jnp.sqrt(dt)

    def reverse(self, score_fn, probability_flow: bool = False) -> "ReverseSDE":
        """The reverse-time SDE (or probability-flow ODE) driven by ``score_fn(x, t)``."""
        return ReverseSDE(self, score_fn, probability_flow)


class ReverseSDE:
    """Reverse-time dynamics dx = [f - c g^2 score] dt + [c=1: g] dW-bar, with c = 1/2 and no noise for the ODE.

    Time still runs forward in the formula; solvers integrate it from T down to eps.
    """

    def __init__(self, forward: SDE, score_fn, probability_flow: bool = False):
        self.forward = forward
        self.score_fn = score_fn
        self.probability_flow = probability_flow
        self.T = forward.T
        self.N = forward.N

    def sde(self, x: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Reverse drift f - g^2 score (x 1/2 for the ODE), shape ``x.shape``; diffusion ``(B,)`` (0 for the ODE)."""
        t = jnp.broadcast_to(t, x.shape[:1])
        drift = self.forward.reverse_drift(x, t, self.score_fn(x, t), self.probability_flow)
        g = self.forward.diffusion_coef(t)
        return drift, (jnp.zeros_like(g) if self.probability_flow else g)

    def discretize(self, x: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The reverse of :meth:`SDE.discretize`: f - G^2 score (x 1/2 for the ODE) and G (0 for the ODE)."""
        t = jnp.broadcast_to(t, x.shape[:1])
        f, g = self.forward.discretize(x, t)
        c = 0.5 if self.probability_flow else 1.0
        drift = f - c * batch_broadcast(g**2, x) * self.score_fn(x, t)
        return drift, (jnp.zeros_like(g) if self.probability_flow else g)


class VPSDE(SDE):
    """Variance preserving: beta(t) = beta_min + t (beta_max - beta_min), dx = -beta/2 x dt + sqrt(beta) dW.

    With B(t) = int_0^t beta: alpha_t = exp(-B/2), sigma_t = sqrt(1 - exp(-B)), sigma(t) = sqrt(e^B - 1).
    ``discretize`` is the DDPM Markov chain with betas linspace(beta_min/N, beta_max/N, N).
    """

    beta_min: float = eqx.field(static=True)
    beta_max: float = eqx.field(static=True)

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, N: int = 1000):
        beta_min, beta_max, N = real(beta_min, "beta_min"), real(beta_max, "beta_max"), integer(N, "N", minimum=1)
        if not 0 < beta_min < beta_max:
            raise ValueError(f"need 0 < beta_min < beta_max, got beta_min={beta_min}, beta_max={beta_max}")
        self.beta_min, self.beta_max, self.N = beta_min, beta_max, N

    @property
    def discrete_betas(self) -> jax.Array:
        return jnp.linspace(self.beta_min / self.N, self.beta_max / self.N, self.N)

    @property
    def prior_std(self) -> float:
        return 1.0

    def beta(self, t):
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def integral_beta(self, t):
        """B(t) = beta_min t + (beta_max - beta_min) t^2 / 2."""
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def t_from_integral_beta(self, b):
        """Positive root of B(t) = b, in the cancellation-free form 2b / (beta_min + sqrt(beta_min^2 + 2 d b))."""
        d = self.beta_max - self.beta_min
        return 2.0 * b / (self.beta_min + jnp.sqrt(self.beta_min**2 + 2.0 * d * b))

    def drift_coef(self, t):
        return -0.5 * self.beta(t)

    def diffusion_coef(self, t):
        return jnp.sqrt(self.beta(t))

    def marginal_coeffs(self, t):
        b = self.integral_beta(t)
        return jnp.exp(-0.5 * b), jnp.sqrt(-jnp.expm1(-b))

    def sigma(self, t):
        return jnp.sqrt(jnp.expm1(self.integral_beta(t)))

    def t_from_sigma(self, sigma):
        return self.t_from_integral_beta(jnp.log1p(sigma**2))

    def t_from_half_log_snr(self, lam):
        # B = log(1 + e^{-2 lambda}) = softplus(-2 lambda), stable for any lambda.
        return self.t_from_integral_beta(jax.nn.softplus(-2.0 * lam))

    def discretize(self, x, t):
        if self.beta_max >= self.N:
            # The DDPM chain's betas run up to beta_max / N and must stay below 1.
            raise ValueError(f"N must exceed beta_max for the DDPM chain, got N={self.N}, beta_max={self.beta_max}")
        t = jnp.broadcast_to(t, x.shape[:1])
        i = (t * (self.N - 1) / self.T).astype(jnp.int32)
        beta = self.discrete_betas[i]
        return batch_broadcast(jnp.sqrt(1.0 - beta), x) * x - x, jnp.sqrt(beta)


class SubVPSDE(VPSDE):
    """Sub-VP: dx = -beta/2 x dt + sqrt(beta (1 - e^{-2B})) dW, variance below the VP one.

    alpha_t = exp(-B/2), sigma_t = 1 - exp(-B) (the std, not the variance), sigma(t) = 2 sinh(B/2).
    ``discretize`` is Euler-Maruyama.
    """

    def diffusion_coef(self, t):
        return jnp.sqrt(self.beta(t) * -jnp.expm1(-2.0 * self.integral_beta(t)))

    def marginal_coeffs(self, t):
        b = self.integral_beta(t)
        return jnp.exp(-0.5 * b), -jnp.expm1(-b)

    def sigma(self, t):
        return 2.0 * jnp.sinh(0.5 * self.integral_beta(t))

    def t_from_sigma(self, sigma):
        return self.t_from_integral_beta(2.0 * jnp.arcsinh(0.5 * sigma))

    def t_from_half_log_snr(self, lam):
        return self.t_from_sigma(jnp.exp(-lam))

    def discretize(self, x, t):
        return SDE.discretize(self, x, t)


def _noise_range(sigma_min, sigma_max, N) -> tuple[float, float, int]:
    """Checked (sigma_min, sigma_max, N) of a process given by its noise levels (VE, the EDM path)."""
    sigma_min, sigma_max, N = real(sigma_min, "sigma_min"), real(sigma_max, "sigma_max"), integer(N, "N", minimum=1)
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    return sigma_min, sigma_max, N


class VESDE(SDE):
    """Variance exploding: sigma_t = sigma_min (sigma_max / sigma_min)^t, dx = sqrt(d sigma_t^2 / dt) dW.

    alpha_t = 1 and, as in score_sde, the marginal std is sigma_t itself (the kernel of p_0 convolved with
    N(0, sigma_min^2)). ``discretize`` is the SMLD chain over N geometric noise levels.
    """

    sigma_min: float = eqx.field(static=True)
    sigma_max: float = eqx.field(static=True)

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, N: int = 1000):
        sigma_min, sigma_max, N = _noise_range(sigma_min, sigma_max, N)
        self.sigma_min, self.sigma_max, self.N = sigma_min, sigma_max, N

    @property
    def _log_ratio(self) -> float:
        return math.log(self.sigma_max / self.sigma_min)

    @property
    def is_vp_type(self) -> bool:
        return False

    @property
    def prior_std(self) -> float:
        return self.sigma_max

    @property
    def discrete_sigmas(self) -> jax.Array:
        return jnp.exp(jnp.linspace(math.log(self.sigma_min), math.log(self.sigma_max), self.N))

    def drift_coef(self, t):
        return jnp.zeros_like(jnp.asarray(t, jnp.result_type(float)))

    def diffusion_coef(self, t):
        return self.sigma(t) * math.sqrt(2.0 * self._log_ratio)

    def marginal_coeffs(self, t):
        return jnp.ones_like(jnp.asarray(t, jnp.result_type(float))), self.sigma(t)

    def sigma(self, t):
        return self.sigma_min * jnp.exp(t * self._log_ratio)

    def t_from_sigma(self, sigma):
        return jnp.log(sigma / self.sigma_min) / self._log_ratio

    def discretize(self, x, t):
        t = jnp.broadcast_to(t, x.shape[:1])
        i = (t * (self.N - 1) / self.T).astype(jnp.int32)
        sig = self.discrete_sigmas[i]
        prev = jnp.where(i == 0, 0.0, self.discrete_sigmas[jnp.maximum(i - 1, 0)])
        return jnp.zeros_like(x), jnp.sqrt(sig**2 - prev**2)


def _float(t) -> jax.Array:
    return jnp.asarray(t, jnp.result_type(float))


class GaussianPath(SDE):
    """The SDE of a Gaussian path x_t = alpha_t x_0 + sigma_t z given by (alpha_t, sigma_t) and their rates.

    Subclasses define ``marginal_coeffs``, ``marginal_rates``, ``t_from_sigma`` and ``prior_std``; the SDE
    follows (module docstring): f = alpha' / alpha, g^2 = 2 sigma (alpha sigma' - sigma alpha') / alpha and
    sigma(t) = sigma_t / alpha_t. ``discretize`` is Euler-Maruyama. The prior is N(0, sigma_T^2 I), the
    noise part of p_T.
    """

    def drift_coef(self, t):
        return self.marginal_rates(t)[0] / self.marginal_coeffs(t)[0]

    def diffusion_coef(self, t):
        alpha, sigma = self.marginal_coeffs(t)
        d_alpha, d_sigma = self.marginal_rates(t)
        # alpha sigma' - sigma alpha' > 0 (lambda decreases): a product of positive terms, no cancellation.
        return jnp.sqrt(2.0 * sigma * (alpha * d_sigma - sigma * d_alpha) / alpha)

    def sigma(self, t):
        alpha, sigma = self.marginal_coeffs(t)
        return sigma / alpha


def _check_end(name: str, T: float) -> None:
    T = real(T, "T")
    if not 0.0 < T < 1.0:
        raise ValueError(f"T must lie in (0, 1) for the {name} path, got {T}: at t = 1 alpha_t = 0, where the score "
                         f"is -x whatever the data and f, g are infinite, so no solve can start there")


class LinearPath(GaussianPath):
    """Rectified flow and conditional flow matching (Liu et al. 2023, arXiv 2209.03003; Lipman et al. 2023,
    arXiv 2210.02747): x_t = (1 - t) x_0 + t z, whose velocity is z - x_0.

    f = -1 / (1 - t), g^2 = 2 t / (1 - t), sigma(t) = t / (1 - t), lambda_t = log((1 - t) / t) = -logit(t).
    Both ends are singular. At t = 0, sigma_t = 0: samplers stop at eps, as for VP. At t = 1, alpha_t = 0:
    the law is exactly N(0, I), but f and g are infinite and the score (-x for every data distribution)
    says nothing about the data, so the process stops at ``T`` < 1 (default 1 - 1e-3: lambda_T = -6.9, below
    VP's -5.0), where the prior N(0, T^2 I) is the noise part of p_T and misses only the (1 - T) x_0 term.
    Near T the reverse SDE is stiff (drift ~ x / (1 - t)): its Euler-type samplers need steps small against
    1 - t there, i.e. a grid dense near T such as ``time_grid="logsnr"``.
    """

    def __init__(self, T: float = 1.0 - 1e-3, N: int = 1000):
        _check_end("linear", T)
        self.T, self.N = float(T), integer(N, "N", minimum=1)

    @property
    def prior_std(self) -> float:
        return self.T

    def marginal_coeffs(self, t):
        t = _float(t)
        return 1.0 - t, t

    def marginal_rates(self, t):
        one = jnp.ones_like(_float(t))
        return -one, one

    def t_from_sigma(self, sigma):
        return sigma / (1.0 + sigma)

    def half_log_snr(self, t):
        t = _float(t)
        return jnp.log1p(-t) - jnp.log(t)

    def t_from_half_log_snr(self, lam):
        return jax.nn.sigmoid(-lam)


class CosinePath(GaussianPath):
    """The cosine path alpha_t = cos(pi t / 2), sigma_t = sin(pi t / 2) (variance preserving; flow_matching's
    ``CosineScheduler``; the angle of Salimans & Ho's v, whose velocity is (pi / 2) v).

    f = -(pi / 2) tan(pi t / 2), g^2 = pi tan(pi t / 2), sigma(t) = tan(pi t / 2). Singular at t = 1 like the
    linear path: it stops at ``T`` < 1 (default 1 - 1e-3: lambda_T = -6.5) with prior N(0, sin^2(pi T / 2) I).
    """

    def __init__(self, T: float = 1.0 - 1e-3, N: int = 1000):
        _check_end("cosine", T)
        self.T, self.N = float(T), integer(N, "N", minimum=1)

    @property
    def prior_std(self) -> float:
        return math.sin(0.5 * math.pi * self.T)

    def marginal_coeffs(self, t):
        angle = 0.5 * jnp.pi * _float(t)
        return jnp.cos(angle), jnp.sin(angle)

    def marginal_rates(self, t):
        angle = 0.5 * jnp.pi * _float(t)
        return -0.5 * jnp.pi * jnp.sin(angle), 0.5 * jnp.pi * jnp.cos(angle)

    def sigma(self, t):
        return jnp.tan(0.5 * jnp.pi * _float(t))

    def t_from_sigma(self, sigma):
        return jnp.arctan(sigma) * (2.0 / jnp.pi)


class EDMPath(GaussianPath):
    """EDM's process (Karras et al. 2022, arXiv 2206.00364): x_t = x_0 + t z, so t is the noise level sigma(t) = t.

    f = 0, g^2 = 2 t on t in [0, T = sigma_max]; prior N(0, sigma_max^2 I); samplers stop at eps = sigma_min
    by default (EDM's 0.002 and 80).
    """

    sigma_min: float = eqx.field(static=True)

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, N: int = 1000):
        sigma_min, sigma_max, N = _noise_range(sigma_min, sigma_max, N)
        self.sigma_min, self.T, self.N = sigma_min, sigma_max, N

    @property
    def is_vp_type(self) -> bool:
        return False

    @property
    def default_eps(self) -> float:
        return self.sigma_min

    @property
    def prior_std(self) -> float:
        return self.T

    def marginal_coeffs(self, t):
        t = _float(t)
        return jnp.ones_like(t), t

    def marginal_rates(self, t):
        t = _float(t)
        return jnp.zeros_like(t), jnp.ones_like(t)

    def t_from_sigma(self, sigma):
        return sigma


SDES = {"vpsde": VPSDE, "subvpsde": SubVPSDE, "vesde": VESDE, "linear": LinearPath, "cosine": CosinePath,
        "edm": EDMPath}
CLI_NAMES = ("vp", "subvp", "ve", "linear", "cosine", "edm")  # the --sde choices of the scripts (see sde_class)


def sde_class(name: str) -> type[SDE]:
    """The SDE class of ``name``: score_sde's config names (``vpsde``, ``subvpsde``, ``vesde``), the short
    command-line ones (``vp``, ``subvp``, ``ve``) or a path's (``linear``, ``cosine``, ``edm``)."""
    key = name if name in SDES else f"{name}sde"
    if key not in SDES:
        raise ValueError(f"unknown SDE {name!r}; choose from {', '.join(SDES)} (or vp, subvp, ve)")
    return SDES[key]


def get_sde(config) -> SDE:
    """The forward SDE of a run config: ``config.training.sde`` with ``config.model``'s beta range (VP, sub-VP)
    or sigma range (VE, EDM path) and N = ``model.num_scales`` (score_sde's fields); the linear and cosine
    paths take their default T."""
    cls, m = sde_class(config.training.sde), config.model
    if issubclass(cls, VPSDE):  # VP and sub-VP
        return cls(m.beta_min, m.beta_max, N=m.num_scales)
    if cls in (LinearPath, CosinePath):
        return cls(N=m.num_scales)
    return cls(m.sigma_min, m.sigma_max, N=m.num_scales)
