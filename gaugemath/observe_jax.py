"""The gauge observables of :mod:`gaugemath.observe` for JAX parameter pytrees.

Same definitions as the torch module (see there and ``docs/observe.md``), on the functional JAX
plumbing of :mod:`gaugemath.backends.jax`: Noether charges ``Q_k = ⟨X_k(θ), θ⟩ + ⟨X_k(0), θ⟩`` of the
scale/translate families, the orbit drift ``‖θ_F − h_F(θ)·θ_F‖/‖θ_F‖`` per family, and the vertical
fraction ``‖P_V ũ‖/‖ũ‖`` of an update in the invariant metric. Each function is a pure function of
arrays, so it can be ``jax.jit``-ed with the binding closed over. Weight and activation spectra are
plain ``jnp.linalg`` calls and are left to the user.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gaugemath.backends.jax.binding import JaxBinding, leaf_paths
from gaugemath.backends.jax.projection import Projector


def bound_leaves(binding: JaxBinding, params) -> list:
    """The leaves of ``params`` the binding names, in binding order."""
    by_path = dict(zip(leaf_paths(params), jax.tree_util.tree_leaves(params)))
    return [by_path[p] for p in binding.paths]


def _norm(ts) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(t * t) for t in ts))


def charges(binding: JaxBinding, params) -> dict[str, jax.Array]:
    """``Q_k`` per scale/translate family, ``(units,)``."""
    theta = bound_leaves(binding, params)
    zeros = [jnp.zeros_like(t) for t in theta]
    return {f.name: f.coords(theta, theta) + f.coords(zeros, theta)
            for f in binding.families if f.kind in ("scale", "translate")}


def orbit_drift(binding: JaxBinding, params) -> dict[str, jax.Array]:
    """``‖θ_F − h_F(θ)·θ_F‖ / ‖θ_F‖`` per family (each family's frame alone)."""
    theta = bound_leaves(binding, params)
    out = {}
    for f in binding.families:
        idx = sorted({i for _, i in f.members()})
        moved = f.act(f.frame(theta), theta)
        out[f.name] = _norm([moved[i] - theta[i] for i in idx]) / _norm([theta[i] for i in idx])
    return out


def vertical_fraction(binding: JaxBinding, before, after) -> jax.Array:
    """``‖P_V ũ‖/‖ũ‖`` for the update ``after − before`` (pytrees), at the canonical point of ``before``."""
    from gaugemath.backends.jax.check import canonical_point
    from gaugemath.backends.jax.layout import entries, sync, to_work

    lay = binding.layout
    t0 = entries(lay, to_work(lay, bound_leaves(binding, before)))
    t1 = entries(lay, to_work(lay, bound_leaves(binding, after)))
    t0, applied = canonical_point(binding, t0)  # the optimizer's composed frame of θ_t, applied to both points
    for f, h in applied:
        t1 = sync(lay, t1, f.act(h, t1))
    fams = [f for f, _ in applied]
    n = len(binding.paths)
    u = entries(lay, [b - a for a, b in zip(t0[:n], t1[:n])])
    names = binding.entry_names()
    projector = Projector(fams, names, [lay.base(i) for i in range(len(names))], binding.frames == "balanced")
    coef = projector.solve(projector.factor(t0), [f.coords(t0, u)[..., None] for f in fams])
    out = entries(lay, [jnp.zeros_like(t) for t in t0[:n]])
    for f, c in zip(fams, coef):
        out = sync(lay, out, f.lift(c[..., 0], t0, out))
    return _norm(out[:n]) / _norm(u[:n])
