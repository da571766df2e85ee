"""The optimizer and gradient step that fpjax's two trainers share (:mod:`fpjax.learn.trainer`, :mod:`fpjax.learn.dsm`).

Adam (the papers' optimizer, learning rate 1e-3 in the cross-matrix paper), with an optional linear warm-up and
global-norm clipping; one step is ``value_and_grad`` of a loss of the parameters followed by the Adam update, a
pure function for ``jit`` and ``lax.scan``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import optax


def adam(learning_rate: float, warmup_steps: int = 0, grad_clip: float | None = None) -> optax.GradientTransformation:
    """Adam at ``learning_rate``, reached by a linear warm-up from 0 over ``warmup_steps`` (0: none), after clipping
    the gradients to global norm ``grad_clip`` (``None``: no clipping)."""
    lr = optax.linear_schedule(0.0, learning_rate, warmup_steps) if warmup_steps else learning_rate
    transform = optax.adam(lr)
    return optax.chain(optax.clip_by_global_norm(grad_clip), transform) if grad_clip else transform


def gradient_step(optimizer: optax.GradientTransformation, loss_fn: Callable, params, opt_state):
    """One optimizer step on ``loss_fn(params) -> scalar``: returns ``(params, opt_state, loss)`` (jit- and
    scan-safe)."""
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss
