"""PDS: preconditioned diffusion sampling (Ma, Zhang, Zhu, Feng; DESIGN.md section 6).

A preconditioner ``M = M_f o M_p`` rescales the sampler's update so that
coordinates of very different scales (low against high frequencies, bright
against dark pixels) move at similar speeds::

    M_p[x] = x / R_p,          R_p = log(E[x * x] + 1)                       (pixel, eqs. 35-37)
    M_f[x] = F^-1[F[x] / R_f], R_f = log(E |F[x]|^2 + 1)                     (frequency, eqs. 32-34)
    R <- (R / max R + alpha - 1) / alpha                                      (normalisation; alpha -> inf: identity)

with ``F`` the 2-D DFT over ``(H, W)`` per channel (no shift). ``E |F[x]|^2``
is even in the frequency for real images, so ``M_f`` is a real symmetric
operator, and ``M^T = M_p o M_f``. Masks have the image layout ``(H, W, C)``.
The preconditioned Langevin dynamics ``dx = 1/2 eps^2 (M M^T + omega S) grad log p dt
+ eps M dW`` keep ``p`` stationary for any skew-symmetric ``S`` (the paper's
theorem 2), which is what the tests check. The preconditioned *reverse SDE*
the paper builds from them (its eq. 27, theorem 3: ``M M^T`` on the score,
``M z`` on the noise) does not keep the marginals: it reverses ``dx = g M dW``,
not the forward SDE whose score it uses; ``SamplerConfig.pds_form`` in
:mod:`fpjax.diffusion.sampling` has it (``"paper"``, by name) and the
marginal-preserving form (``(I + M M^T)/2`` on the score; the default), and
:mod:`fpjax.diffusion.exact` its bias in closed form.

Two normalisations of a mask ``R``: the paper's text divides by its maximum
(:func:`normalise`, values in ``(0, 1]``, so ``M`` only enlarges modes); the
released code does not (:func:`normalise_released`, ``(R + alpha - 1)/alpha``,
so modes with ``R > 1`` are shrunk: with ``R_f`` up to ~12.6 on CIFAR-10, the
low frequencies then keep much of the prior's noise).
"""

from __future__ import annotations

import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from fpjax import files


def normalise(mask, alpha: float):
    """``(R / max R + alpha - 1) / alpha`` (eqs. 34, 37): values in ``(0, 1]``, the identity as ``alpha -> inf``."""
    if alpha < 1.0:
        raise ValueError(f"alpha must be >= 1, got {alpha}")
    return (mask / jnp.max(mask) + alpha - 1.0) / alpha


def normalise_released(mask, alpha: float):
    """``(R + alpha - 1) / alpha``: the released code's normalisation (``sampling.py`` of fudan-zvg/PDS), not divided
    by ``max R``; values above 1 where ``R > 1``."""
    if alpha < 1.0:
        raise ValueError(f"alpha must be >= 1, got {alpha}")
    return (mask + alpha - 1.0) / alpha


@jax.jit
def frequency_statistics(images):
    """``log(E |F[x]|^2 + 1)`` of ``(N, H, W, C)`` images -> ``(H, W, C)`` (unnormalised ``R_f``, eq. 33)."""
    spectrum = jnp.fft.fft2(images, axes=(1, 2))
    return jnp.log(jnp.mean(jnp.abs(spectrum) ** 2, axis=0) + 1.0)


@jax.jit
def pixel_statistics(images):
    """``log(E[x * x] + 1)`` of ``(N, H, W, C)`` images -> ``(H, W, C)`` (unnormalised ``R_p``, eq. 36)."""
    return jnp.log(jnp.mean(images**2, axis=0) + 1.0)


def radial_mask(shape, radius: float, scale: float):
    """Eq. 58: ``1`` within ``radius * sqrt(2)`` of the centre of the shifted spectrum, ``scale`` outside.

    ``shape = (H, W, C)``; returned in the unshifted DFT layout of :func:`apply_frequency`. Not normalised
    (the paper's eq. 59).
    """
    h, w, c = shape
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    inside = (yy - 0.5 * h) ** 2 + (xx - 0.5 * w) ** 2 <= 2 * radius**2
    mask = np.fft.ifftshift(np.where(inside, 1.0, scale), axes=(0, 1))
    return jnp.asarray(np.repeat(mask[..., None], c, axis=-1), jnp.float32)


def apply_frequency(x, r_f):
    """``M_f[x] = Re F^-1[F[x] / R_f]`` for ``(..., H, W, C)`` ``x``."""
    spectrum = jnp.fft.fft2(x, axes=(-3, -2)) / jnp.broadcast_to(r_f, x.shape)
    return jnp.real(jnp.fft.ifft2(spectrum, axes=(-3, -2))).astype(x.dtype)


def apply_pixel(x, r_p):
    """``M_p[x] = x / R_p``."""
    return x / jnp.broadcast_to(r_p, x.shape)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Preconditioner:
    """``M = M_f o M_p`` from normalised masks (``None``: that factor is the identity).

    A pytree of its masks, so it can be a traced argument of a jitted sampler (one compilation serves every
    ``alpha``); ``apply`` is ``M``, ``transpose`` is ``M^T``.
    """

    r_f: jax.Array | None = None
    r_p: jax.Array | None = None

    def apply(self, x):
        if self.r_p is not None:
            x = apply_pixel(x, self.r_p)
        return x if self.r_f is None else apply_frequency(x, self.r_f)

    def transpose(self, x):
        if self.r_f is not None:
            x = apply_frequency(x, self.r_f)
        return x if self.r_p is None else apply_pixel(x, self.r_p)

    def gram(self, x):
        """``M M^T x``."""
        return self.apply(self.transpose(x))

    def save(self, path) -> None:
        arrays = {k: np.asarray(v) for k, v in (("r_f", self.r_f), ("r_p", self.r_p)) if v is not None}
        path = pathlib.Path(path)
        path = path if path.suffix == ".npz" else path.with_name(path.name + ".npz")  # as np.savez names it
        with files.atomic(path) as (temporary,):
            np.savez(temporary, **arrays)

    @classmethod
    def load(cls, path) -> Preconditioner:
        """The preconditioner :meth:`save` wrote; a file with other arrays (which would load as the identity),
        none of ``r_f``/``r_p``, or non-finite masks is refused naming the file."""
        with np.load(path) as data:
            names = set(data.files)
            if not names or not names <= {"r_f", "r_p"}:
                raise ValueError(
                    f"{path} is not a PDS preconditioner: it holds arrays {sorted(names)}, expected 'r_f' and/or "
                    "'r_p' (as Preconditioner.save writes them)"
                )
            masks = {k: np.asarray(data[k]) for k in sorted(names)}
        bad = [k for k, v in masks.items() if v.dtype.kind not in "fiu" or not np.isfinite(v).all()]
        if bad:
            raise ValueError(f"{path}: the preconditioner's {', '.join(bad)} must be finite real numbers")
        return cls(**{k: jnp.asarray(v) for k, v in masks.items()})


def as_preconditioner(preconditioner: Preconditioner | None) -> Preconditioner:
    """``preconditioner``, or the identity ``M = I`` (a :class:`Preconditioner` without masks) for ``None``: the
    one place where "no preconditioner" becomes an operator (the samplers of :mod:`fpjax.diffusion.sampling` and
    :mod:`fpjax.learn.ddpm`, :func:`langevin`). Anything with ``apply``, ``transpose`` and ``gram`` passes through."""
    return Preconditioner() if preconditioner is None else preconditioner


def from_data(images, alpha: float, pixel: bool = True, mask: str = "paper") -> Preconditioner:
    """The paper's preconditioner estimated from ``(N, H, W, C)`` images in one jitted pass (it uses 200).

    ``mask="paper"``: normalised as in the paper's text (:func:`normalise`); ``"released"``: as in its released
    code (:func:`normalise_released`, not divided by the maximum)."""
    if mask not in ("paper", "released"):
        raise ValueError(f"mask must be 'paper' or 'released', got {mask!r}")
    norm = normalise if mask == "paper" else normalise_released
    images = jnp.asarray(images)
    r_f = norm(frequency_statistics(images), alpha)
    r_p = norm(pixel_statistics(images), alpha) if pixel else None
    return Preconditioner(r_f, r_p)


def solenoidal(x, kind: str = "shift", shift: int = 1):
    """A skew-symmetric ``S x`` (eqs. 52-57) for ``(..., H, W, C)`` ``x``.

    ``"shift"`` (eqs. 52-54): ``(P_(m,m) - P_(m,m)^T) x``, ``P_(m,n)`` rolling by ``m`` rows and ``n`` columns.
    ``"fourier"`` (eqs. 55-57): ``Re[F (P - P^T) F^-1] x`` with the unitary 2-D DFT ``F``.
    ``"dft"`` (sec. 7.5): ``Re[F[x] - F^T[x]]``.

    Taken literally, the last two vanish on real images: the DFT diagonalises
    the shifts, so ``F (P - P^T) F^-1`` is diagonal and purely imaginary, and
    the DFT matrix is symmetric, so ``F - F^T = 0``. That fits the paper's
    finding that ``omega`` has no effect; only the shift forms are a genuine
    solenoidal term. They are kept to make that checkable (``tests/test_pds.py``).
    """
    axes = (-3, -2)
    if kind == "shift":
        return jnp.roll(x, (shift, shift), axis=axes) - jnp.roll(x, (-shift, -shift), axis=axes)
    if kind == "fourier":
        z = jnp.fft.ifft2(x, axes=axes, norm="ortho")
        z = jnp.roll(z, (shift, shift), axis=axes) - jnp.roll(z, (-shift, -shift), axis=axes)
        return jnp.real(jnp.fft.fft2(z, axes=axes, norm="ortho")).astype(x.dtype)
    if kind == "dft":
        # F^T[x] = F[x] for the symmetric DFT matrix; written out to mirror the paper.
        return jnp.real(jnp.fft.fft2(x, axes=axes) - jnp.fft.fft2(x, axes=axes)).astype(x.dtype)
    raise ValueError(f"kind must be 'shift', 'fourier' or 'dft', got {kind!r}")


def langevin(score, x, key, step: float, steps: int, preconditioner: Preconditioner | None = None,
             omega: float = 0.0, kind: str = "shift"):  # fmt: skip
    """Preconditioned Langevin dynamics ``x <- x + step/2 (M M^T + omega S) s(x) + sqrt(step) M z``, ``steps`` times.

    ``score(x)`` is the (time-independent) score; ``preconditioner=None`` is ``M = I``. One ``lax.scan``.
    """
    m = as_preconditioner(preconditioner)

    def body(x, k):
        s = score(x)
        drift = m.gram(s) + (omega * solenoidal(s, kind) if omega else 0.0)
        return x + 0.5 * step * drift + jnp.sqrt(step) * m.apply(jax.random.normal(k, x.shape, x.dtype)), None

    x, _ = jax.lax.scan(body, x, jax.random.split(key, steps))
    return x


def fit_alpha_T(Ts, alphas, power: int = 1):
    """Fit eq. 50, ``(1 + 1/alpha)^power - 1 = a / T + b``, to the best ``alpha`` at a few ``T``; returns ``(a, b)``."""
    Ts, alphas = np.asarray(Ts, float), np.asarray(alphas, float)
    if Ts.size < 2:
        raise ValueError("need the best alpha at two or more T")
    y = (1.0 + 1.0 / alphas) ** power - 1.0
    a, b = np.polyfit(1.0 / Ts, y, 1)
    return float(a), float(b)


def predict_alpha(T, a: float, b: float, power: int = 1):
    """``alpha`` at ``T`` from a fit of :func:`fit_alpha_T` (``inf`` where the line gives no preconditioning)."""
    y = a / np.asarray(T, float) + b
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(y > 0, 1.0 / ((1.0 + y) ** (1.0 / power) - 1.0), np.inf)
