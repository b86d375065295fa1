"""The Rotational Wrapper (seed 004, [K] App. M Algorithm 1) as an optax ``GradientTransformation``: the JAX twin of
:class:`gaugemath.rotational.RotationalWrapper` (see that module for the math and :func:`~gaugemath.rotational.
equilibrium` for ``η̂_r``).

``rotational_wrapper(inner, learning_rate, rotational, ...)``: ``inner`` is the optimizer's transformation *without*
weight decay on the rotational leaves (optax cannot switch it off from outside; e.g.
``optax.adamw(lr, weight_decay=λ, mask=lambda p: not_rotational)``), ``learning_rate`` its learning rate (a float
or an optax schedule, to strip it from the inner update as the seed does), ``rotational`` a pytree of bools like
the parameters (or a function of the parameters returning one): the leaves whose rows are rotational vectors.
``eta_r`` or ``weight_decay`` (with ``inner_kind``) sets the angular update.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gaugemath.rotational import OPTIMIZERS, equilibrium


class RotationalState(NamedTuple):
    inner: Any
    count: jax.Array
    nu: Any  # per rotational leaf: (rows,) running mean of ‖Δ‖²; other leaves: ()
    norm: Any  # per rotational leaf: (rows,) the frozen row norms; other leaves: ()


def rotational_wrapper(inner: optax.GradientTransformation, learning_rate: float | Callable,
                       rotational: Any, *, eta_r: float | None = None, weight_decay: float | None = None,
                       inner_kind: str = "adamw", betas: tuple[float, float] = (0.9, 0.999), momentum: float = 0.9,
                       beta: float = 0.99, eps: float = 1e-8, center: bool = True) -> optax.GradientTransformation:
    """[K]'s Rotational Wrapper around ``inner`` (module docstring). Rows of each rotational leaf (reshaped
    ``(rows, -1)``) are the vectors; ``η̂_r`` is ``eta_r``, or :func:`~gaugemath.rotational.equilibrium`'s for
    ``inner_kind`` with the current learning rate and ``weight_decay``."""
    if not 0 <= beta < 1:
        raise ValueError(f"beta={beta}: choose 0 <= beta < 1")
    if eta_r is None and (weight_decay is None or weight_decay <= 0 or inner_kind not in OPTIMIZERS):
        raise ValueError("give eta_r, or weight_decay > 0 and inner_kind in " f"{OPTIMIZERS} for the default η̂_r")

    def mask_of(params):
        return rotational(params) if callable(rotational) else rotational

    def rows(x):
        return x.reshape(x.shape[0], -1)

    def angular(lr):
        if eta_r is not None:
            return eta_r
        kw = {"betas": betas} if inner_kind in ("adamw", "lion") else {"momentum": momentum}
        # η̂_r = √(lr / η₀) × η̂_r(η₀): every formula here is √(ηλ c), so a traced (scheduled) lr works under jit
        ref = 1e-6
        return jnp.sqrt(lr / ref) * equilibrium(inner_kind, ref, weight_decay, 1, **kw).angular_update

    def init(params):
        mask = mask_of(params)
        nu = jax.tree_util.tree_map(lambda p, m: jnp.zeros(p.shape[0], p.dtype) if m else jnp.zeros(()), params, mask)
        norm = jax.tree_util.tree_map(lambda p, m: jnp.linalg.norm(rows(p), axis=1) if m else jnp.zeros(()),
                                      params, mask)
        return RotationalState(inner.init(params), jnp.zeros([], jnp.int32), nu, norm)

    def update(grads, state, params=None):
        if params is None:
            raise ValueError("rotational_wrapper needs params: call update(grads, state, params)")
        mask = mask_of(params)
        updates, inner_state = inner.update(grads, state.inner, params)
        lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
        count = state.count + 1
        rate = angular(lr)

        def one(u, p, m, nu, n):
            if not m:
                return u, nu
            old = rows(p)
            delta = rows(u) / lr
            delta = delta - (jnp.sum(delta * old, 1, keepdims=True) / jnp.sum(old * old, 1, keepdims=True)) * old
            nu = beta * nu + (1 - beta) * jnp.sum(delta * delta, 1)
            nu_hat = nu / (1 - beta ** count.astype(p.dtype))
            new = old + (rate * n / jnp.sqrt(nu_hat + eps))[:, None] * delta
            if center:
                new = new - jnp.mean(new, 1, keepdims=True)
            new = n[:, None] * new / jnp.linalg.norm(new, axis=1, keepdims=True)
            return (new - old).reshape(p.shape), nu

        flat_u, treedef = jax.tree_util.tree_flatten(updates)
        leaves = [jax.tree_util.tree_leaves(t) for t in (params, state.nu, state.norm)]
        flat_m = jax.tree_util.tree_leaves(mask)
        out = [one(u, p, m, nu, n) for u, p, m, nu, n in zip(flat_u, leaves[0], flat_m, leaves[1], leaves[2])]
        new_updates = jax.tree_util.tree_unflatten(treedef, [o[0] for o in out])
        new_nu = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(state.nu), [o[1] for o in out])
        return new_updates, RotationalState(inner_state, count, new_nu, state.norm)

    return optax.GradientTransformation(init, update)
