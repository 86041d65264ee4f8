"""Linear measurement operators y = A x for training-free inverse problems (``guidance.linear_inverse``).

An operator maps a batch of data ``x`` ``(B, *dims)`` to measurements ``(B, *meas_dims)`` and knows what a
solver of a linear inverse problem needs, each without forming a matrix:

* ``A(x)``, the measurement, and ``AT(y)``, its transpose (the adjoint: <A x, y> = <x, A^T y>);
* ``weighted_pinv(v, r2, s2)`` = A^T (r2 A A^T + s2 I)^+ v (``r2``, ``s2`` scalars or ``(B,)``): ΠGDM's
  guidance vector; with r2 = 1, s2 = 0 it is the pseudo-inverse ``pinv(v)`` = A^+ v = A^T (A A^T)^+ v;
* ``project(x, y)`` = x + A^+ (y - A x), the point nearest to x with A x = y (for y in A's range);
* ``measure_shape(shape)`` and ``data_shape(meas_shape)``: the measurement shape of data of ``shape``
  ``(B, *dims)``, checked (a ValueError naming the operator and the shapes), and the data shape the
  measurement of ``meas_shape`` comes from;
* ``as_matrix(dims)``: the dense ``(M, D)`` matrix on flattened examples (for the Gaussian-mixture oracle's
  exact posterior, ``GaussianMixture.posterior``).

Each concrete operator has A A^T in closed form (diagonal, a multiple of I, diagonal in Fourier space, or
a small dense matrix), so ``weighted_pinv`` and ``pinv`` are exact and cheap:

* :class:`Mask` (inpainting; optionally in an orthonormal channel basis), same shape, A A^T = diag(mask);
* :class:`AvgPool` (super-resolution): mean over ``factor`` blocks of (B, H, W, C), A A^T = I / prod(factor);
* :class:`Blur` (deblurring): a 2-D kernel convolved circularly (periodic boundary) with every channel,
  same shape; diagonal in the 2-D DFT, whose singular values are the kernel's |FFT|;
* :class:`ChannelMix` (colourisation: RGB -> grey): a ``(C_out, C_in)`` matrix on the last axis;
* :class:`Matrix`: any ``(M, D)`` matrix on the flattened example.
"""

from __future__ import annotations

import abc
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from sde_lib.sdes import batch_broadcast

RCOND = 1e-5  # singular values below RCOND * the largest count as zero in pseudo-inverses


def _fmt(shape) -> str:
    return str(tuple(int(s) for s in shape))


class LinearOperator(eqx.Module):
    """The protocol (module docstring). Subclasses define ``A``, ``AT``, ``weighted_pinv``,
    ``measure_shape`` and ``data_shape``; ``pinv``, ``project`` and ``as_matrix`` follow from them."""

    @abc.abstractmethod
    def A(self, x: jax.Array) -> jax.Array:
        """The measurement, ``(B, *dims)`` -> ``(B, *meas_dims)``."""

    @abc.abstractmethod
    def AT(self, y: jax.Array) -> jax.Array:
        """The transpose, ``(B, *meas_dims)`` -> ``(B, *dims)``: <A x, y> = <x, A^T y>."""

    @abc.abstractmethod
    def weighted_pinv(self, v: jax.Array, r2=1.0, s2=0.0) -> jax.Array:
        """A^T (r2 A A^T + s2 I)^+ v for measurements ``v`` ``(B, *meas_dims)``; r2 > 0, s2 >= 0 scalars or ``(B,)``."""

    @abc.abstractmethod
    def measure_shape(self, shape) -> tuple[int, ...]:
        """The measurement's shape for data of ``shape`` ``(B, *dims)``; a ValueError naming both if none."""

    @abc.abstractmethod
    def data_shape(self, meas_shape) -> tuple[int, ...]:
        """The data shape whose measurement has ``meas_shape``; a ValueError if no data can give it."""

    def pinv(self, y: jax.Array) -> jax.Array:
        """The Moore-Penrose pseudo-inverse A^+ y, ``(B, *dims)``."""
        return self.weighted_pinv(y, 1.0, 0.0)

    def project(self, x: jax.Array, y: jax.Array) -> jax.Array:
        """x + A^+ (y - A x): x with its measured part replaced by y's (A x = y for y in A's range)."""
        return x + self.pinv(y - self.A(x))

    def as_matrix(self, dims) -> jax.Array:
        """The dense ``(M, D)`` matrix of A on examples of shape ``dims``, flattened (row-major)."""
        dims = tuple(int(d) for d in dims)
        self.measure_shape((1,) + dims)
        d = math.prod(dims)
        rows = jax.vmap(lambda e: self.A(e.reshape((1,) + dims)).reshape(-1))(jnp.eye(d, dtype=jnp.float32))
        return rows.T

    def _mismatch(self, shape, why: str) -> ValueError:
        return ValueError(f"{self!r} cannot measure data of shape {_fmt(shape)}: {why}")

    def _not_measurement(self, shape, why: str) -> ValueError:
        return ValueError(f"{self!r} cannot have made measurements of shape {_fmt(shape)}: {why}")


def _scale(c, v):
    """A scalar or per-row ``(B,)`` coefficient broadcast against ``v`` ``(B, ...)``."""
    c = jnp.asarray(c, v.dtype)
    return c if c.ndim == 0 else batch_broadcast(c, v)


def _safe_inverse(g, keep):
    """1 / g where ``keep``, 0 elsewhere (a pseudo-inverse of a diagonal), without a NaN in either branch."""
    return jnp.where(keep, 1.0 / jnp.where(keep, g, 1.0), 0.0)


class Mask(LinearOperator):
    """Keep the coordinates where ``mask`` is 1: A x = mask * x (same shape as x; zeros elsewhere).

    ``mask`` holds 0 and 1 and broadcasts to the data ``(B, *dims)`` (a per-row mask has the leading B).
    With ``basis`` ``(C, C)`` orthonormal, the mask applies to the coordinates x @ basis (the last axis in
    another orthonormal basis, e.g. a decorrelating colour transform whose first channel is a grey level):
    A x = mask * (x @ basis). A A^T = diag(mask), A^+ = A^T.
    """

    mask: jax.Array
    basis: jax.Array | None

    def __init__(self, mask, basis=None):
        mask = jnp.asarray(mask, jnp.float32)
        m = np.asarray(mask)
        if not np.all((m == 0) | (m == 1)):
            raise ValueError("Mask: mask must hold 0 (unobserved) and 1 (observed) only")
        if basis is not None:
            basis = jnp.asarray(basis, jnp.float32)
            b = np.asarray(basis)
            c = b.shape[0] if b.ndim == 2 else -1
            if b.shape != (c, c) or not np.allclose(b @ b.T, np.eye(c), atol=1e-5):
                raise ValueError(f"Mask: basis must be an orthonormal (C, C) matrix acting on the last axis, got "
                                 f"shape {b.shape}")
        self.mask, self.basis = mask, basis

    def __repr__(self):
        return f"Mask(mask {_fmt(self.mask.shape)}" + ("" if self.basis is None else
                                                       f", basis {_fmt(self.basis.shape)}") + ")"

    def _rot(self, x):
        return x if self.basis is None else x @ self.basis

    def _unrot(self, y):
        return y if self.basis is None else y @ self.basis.T

    def A(self, x):
        return self.mask * self._rot(x)

    def AT(self, y):
        return self._unrot(self.mask * y)

    def weighted_pinv(self, v, r2=1.0, s2=0.0):
        # (r2 mask + s2)^+ on the observed coordinates is 1 / (r2 + s2); A^T zeroes the others.
        return self._unrot(self.mask * v / (_scale(r2, v) + _scale(s2, v)))

    def project(self, x, y):
        # The same map as the default, written as a selection so the observed values are kept exactly.
        return self._unrot(self.mask * y + (1.0 - self.mask) * self._rot(x))

    def measure_shape(self, shape):
        shape = tuple(int(s) for s in shape)
        try:
            full = jnp.broadcast_shapes(self.mask.shape, shape)
        except ValueError:
            full = None
        if full != shape:
            raise ValueError(f"Mask: mask of shape {_fmt(self.mask.shape)} does not broadcast to data of shape "
                             f"{_fmt(shape)}")
        if self.basis is not None and shape[-1] != self.basis.shape[0]:
            raise self._mismatch(shape, f"the basis acts on a last axis of {self.basis.shape[0]}")
        return shape

    def data_shape(self, meas_shape):
        return tuple(int(s) for s in meas_shape)


class AvgPool(LinearOperator):
    """Average pooling of images ``(B, H, W, C)`` over ``factor`` = (fh, fw) blocks (an int: square):
    ``(B, H / fh, W / fw, C)``. A^T spreads each value over its block divided by fh fw, so A A^T = I / (fh fw)
    and A^+ = fh fw A^T, the nearest-neighbour upsampling."""

    factor: tuple[int, int] = eqx.field(static=True)

    def __init__(self, factor):
        f = (factor, factor) if isinstance(factor, (int, np.integer)) else tuple(factor)
        if len(f) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1
                                  for v in f):
            raise ValueError(f"AvgPool: factor must be a positive int or a pair of them, got {factor!r}")
        self.factor = (int(f[0]), int(f[1]))

    def __repr__(self):
        return f"AvgPool(factor={self.factor})"

    @property
    def _size(self) -> int:
        return self.factor[0] * self.factor[1]

    def A(self, x):
        b, h, w, c = x.shape
        fh, fw = self.factor
        return x.reshape(b, h // fh, fh, w // fw, fw, c).mean(axis=(2, 4))

    def AT(self, y):
        fh, fw = self.factor
        up = jnp.repeat(jnp.repeat(y, fh, axis=1), fw, axis=2)
        return up / self._size

    def weighted_pinv(self, v, r2=1.0, s2=0.0):
        return self.AT(v) / (_scale(r2, v) / self._size + _scale(s2, v))

    def measure_shape(self, shape):
        shape = tuple(int(s) for s in shape)
        if len(shape) != 4:
            raise self._mismatch(shape, "it pools images (B, H, W, C)")
        (b, h, w, c), (fh, fw) = shape, self.factor
        if h % fh or w % fw:
            raise self._mismatch(shape, f"H and W must be multiples of {fh} and {fw}")
        return (b, h // fh, w // fw, c)

    def data_shape(self, meas_shape):
        meas_shape = tuple(int(s) for s in meas_shape)
        if len(meas_shape) != 4:
            raise self._not_measurement(meas_shape, "pooled images are (B, h, w, C)")
        b, h, w, c = meas_shape
        return (b, h * self.factor[0], w * self.factor[1], c)


class Blur(LinearOperator):
    """Blur images ``(B, H, W, C)``: every channel convolved with a 2-D ``kernel`` ``(k, k)`` (a 1-D
    ``(k,)`` kernel means the separable outer(kernel, kernel)), centred at (k // 2, k // 2), with a periodic
    boundary (circular convolution), so the output has the input's shape and A is diagonal in the 2-D
    DFT: its singular values are |FFT(kernel)|, A^T is the convolution with the flipped kernel, and
    the pseudo-inverse drops frequencies below ``RCOND`` times the largest."""

    kernel: jax.Array

    def __init__(self, kernel):
        k = np.asarray(kernel, np.float32)
        if k.ndim == 1:
            k = np.outer(k, k)
        if k.ndim != 2 or k.size == 0 or not np.all(np.isfinite(k)):
            raise ValueError(f"Blur: kernel must be a finite (k,) or (kh, kw) array, got shape {k.shape}")
        self.kernel = jnp.asarray(k)

    def __repr__(self):
        return f"Blur(kernel {_fmt(self.kernel.shape)})"

    def _spectrum(self, h, w):
        """The kernel's 2-D DFT on an (h, w) grid, ``(h, w)`` complex."""
        kh, kw = self.kernel.shape
        grid = jnp.zeros((h, w), jnp.float32).at[:kh, :kw].set(self.kernel)
        return jnp.fft.fft2(jnp.roll(grid, (-(kh // 2), -(kw // 2)), axis=(0, 1)))

    def _filter(self, x, gain):
        out = jnp.fft.ifft2(jnp.fft.fft2(x, axes=(1, 2)) * gain[None, :, :, None], axes=(1, 2))
        return jnp.real(out).astype(x.dtype)

    def A(self, x):
        return self._filter(x, self._spectrum(*x.shape[1:3]))

    def AT(self, y):
        return self._filter(y, jnp.conj(self._spectrum(*y.shape[1:3])))

    def weighted_pinv(self, v, r2=1.0, s2=0.0):
        power = jnp.abs(self._spectrum(*v.shape[1:3])) ** 2  # A A^T's eigenvalues
        keep = power > (RCOND**2) * jnp.max(power)
        r2, s2 = (jnp.reshape(jnp.asarray(c, v.dtype), (-1, 1, 1, 1)) for c in (r2, s2))
        gain = _safe_inverse(r2 * power[None, :, :, None] + s2, keep[None, :, :, None])
        return self.AT(jnp.real(jnp.fft.ifft2(jnp.fft.fft2(v, axes=(1, 2)) * gain, axes=(1, 2))).astype(v.dtype))

    def measure_shape(self, shape):
        shape = tuple(int(s) for s in shape)
        if len(shape) != 4:
            raise self._mismatch(shape, "it blurs images (B, H, W, C)")
        kh, kw = self.kernel.shape
        if kh > shape[1] or kw > shape[2]:
            raise self._mismatch(shape, f"the kernel {_fmt(self.kernel.shape)} is larger than the image")
        return shape

    def data_shape(self, meas_shape):
        return tuple(int(s) for s in meas_shape)


class _Dense(LinearOperator):
    """A dense ``(M, N)`` ``matrix`` acting on a last axis of N, with A A^T = U diag(lam) U^T precomputed
    (eigenvalues below ``RCOND**2`` times the largest set to 0)."""

    matrix: jax.Array
    gram_u: jax.Array
    gram_lam: jax.Array

    def __init__(self, matrix):
        m = np.asarray(matrix, np.float64)
        if m.ndim != 2 or m.size == 0 or not np.all(np.isfinite(m)):
            raise ValueError(f"{type(self).__name__}: matrix must be a finite 2-D array, got shape {m.shape}")
        lam, u = np.linalg.eigh(m @ m.T)
        lam = np.where(lam > (RCOND**2) * max(lam.max(), 0.0), lam, 0.0)
        self.matrix, self.gram_u, self.gram_lam = (jnp.asarray(a, jnp.float32) for a in (m, u, lam))

    def _gram_pinv(self, v, r2, s2):
        """(r2 A A^T + s2 I)^+ v on a last axis of M; ``r2``, ``s2`` broadcast against v."""
        g = r2 * self.gram_lam + s2
        return ((v @ self.gram_u) * _safe_inverse(g, g > 0)) @ self.gram_u.T


class ChannelMix(_Dense):
    """Mix the channels (last axis) of every pixel by ``matrix`` ``(C_out, C_in)``: y = x @ matrix.T, e.g.
    RGB -> grey with ``[[0.299, 0.587, 0.114]]`` (colourisation). Data ``(B, ..., C_in)``."""

    def __repr__(self):
        return f"ChannelMix(matrix {_fmt(self.matrix.shape)})"

    def A(self, x):
        return x @ self.matrix.T

    def AT(self, y):
        return y @ self.matrix

    def weighted_pinv(self, v, r2=1.0, s2=0.0):
        r2, s2 = (jnp.reshape(jnp.asarray(c, v.dtype), (-1,) + (1,) * (v.ndim - 1)) for c in (r2, s2))
        return self.AT(self._gram_pinv(v, r2, s2))

    def measure_shape(self, shape):
        shape = tuple(int(s) for s in shape)
        c_out, c_in = self.matrix.shape
        if len(shape) < 2 or shape[-1] != c_in:
            raise self._mismatch(shape, f"it mixes a last axis of {c_in} channels")
        return shape[:-1] + (c_out,)

    def data_shape(self, meas_shape):
        meas_shape = tuple(int(s) for s in meas_shape)
        if len(meas_shape) < 2 or meas_shape[-1] != self.matrix.shape[0]:
            raise self._not_measurement(meas_shape, f"it gives a last axis of {self.matrix.shape[0]} channels")
        return meas_shape[:-1] + (int(self.matrix.shape[1]),)


class Matrix(_Dense):
    """Any ``(M, D)`` matrix on the flattened example: y = x.reshape(B, D) @ matrix.T, ``(B, M)``; the data
    have shape ``(B, *dims)`` with prod(dims) = D (``dims`` defaults to ``(D,)``)."""

    dims: tuple[int, ...] = eqx.field(static=True)

    def __init__(self, matrix, dims=None):
        super().__init__(matrix)
        d = int(self.matrix.shape[1])
        self.dims = (d,) if dims is None else tuple(int(s) for s in dims)
        if math.prod(self.dims) != d:
            raise ValueError(f"Matrix: dims {self.dims} hold {math.prod(self.dims)} values, the matrix acts on {d}")

    def __repr__(self):
        return f"Matrix(matrix {_fmt(self.matrix.shape)}, dims {self.dims})"

    def A(self, x):
        return x.reshape(x.shape[0], -1) @ self.matrix.T

    def AT(self, y):
        return (y @ self.matrix).reshape((y.shape[0],) + self.dims)

    def weighted_pinv(self, v, r2=1.0, s2=0.0):
        r2, s2 = (jnp.reshape(jnp.asarray(c, v.dtype), (-1, 1)) for c in (r2, s2))
        return self.AT(self._gram_pinv(v, r2, s2))

    def measure_shape(self, shape):
        shape = tuple(int(s) for s in shape)
        if tuple(shape[1:]) != self.dims:
            raise self._mismatch(shape, f"it acts on examples of shape {self.dims}")
        return (shape[0], int(self.matrix.shape[0]))

    def data_shape(self, meas_shape):
        meas_shape = tuple(int(s) for s in meas_shape)
        if meas_shape[1:] != (self.matrix.shape[0],):
            raise self._not_measurement(meas_shape, f"it gives (B, {self.matrix.shape[0]})")
        return (meas_shape[0],) + self.dims


__all__ = ["AvgPool", "Blur", "ChannelMix", "LinearOperator", "Mask", "Matrix"]
