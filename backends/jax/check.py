"""Check a JAX binding on the model's own apply function: the torch binder's three checks, on pytrees.

``apply(params, *example)`` is the model (any pure function of the parameter pytree), ``loss``
maps its output to what training keeps invariant. With a random element ``g`` of the bound group
(the same draws as :func:`gaugemath.verify.random_element`):

1. **Invariance**: ``max|T(g·θ) − T(θ)| ≤ tol · max|T(θ)|``;
2. **Tangency**: ``|⟨∇L, X_k⟩| ≤ tol · (|X_k|ᵀ|∇L|)`` per unit;
3. **Composite frame**: the canonical point of the composed frames is the same at ``θ`` and ``g·θ``.

``tol = √ε`` of the target's dtype (enable ``jax_enable_x64`` for the fp64 check, 1.5e-8; see
:mod:`gaugemath.backends.torch.check` for why ``√ε`` separates exact gauges from broken ones).
A failure raises a :class:`~gaugemath.GaugeError` naming the family and the measured change: a
square flax kernel ``(in, out)`` bound as ``(out, in)``, say, is caught here instead of training.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gaugemath.errors import GaugeError


def _with_leaves(params, paths: Sequence[str], leaves: list):
    from .binding import _key

    flat, tree = jax.tree_util.tree_flatten_with_path(params)
    index = {p: i for i, p in enumerate(paths)}
    new = []
    for path, leaf in flat:
        name = ".".join(_key(k) for k in path)
        new.append(leaves[index[name]] if name in index else leaf)
    return jax.tree_util.tree_unflatten(tree, new)


def _leaves_of(params, paths: Sequence[str]) -> list:
    from .binding import _key

    flat = {".".join(_key(k) for k in path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
    return [flat[p] for p in paths]


def _element(binding, dtype) -> list:
    import torch

    from gaugemath.verify import random_element

    g = random_element(binding, torch.Generator().manual_seed(0), torch.float64)
    conv = [tuple(jnp.asarray(x.numpy(), dtype=dtype) for x in h) if isinstance(h, tuple)
            else jnp.asarray(h.numpy(), dtype=dtype) for h in g]
    return conv


def _act(binding, g, leaves: list, only=None) -> list:
    return binding.act(g, leaves, only=only)


def _entries(binding, leaves: list) -> list:
    from .layout import entries, to_work

    return entries(binding.layout, to_work(binding.layout, leaves))


def check_binding(binding, params, apply: Callable, example: Sequence, loss: Callable | None = None) -> str:
    """Raise a :class:`GaugeError` for the first family that fails a check; else a one-line summary."""
    target = (lambda p: loss(apply(p, *example))) if loss is not None else (lambda p: apply(p, *example))

    def outputs(p) -> list:
        return [jnp.asarray(t) for t in jax.tree_util.tree_leaves(target(p))]

    theta = _leaves_of(params, binding.paths)
    dtype = theta[0].dtype
    ref = outputs(params)
    tol = max(float(jnp.finfo(t.dtype).eps) for t in ref) ** 0.5
    scale = max(float(jnp.abs(t).max()) for t in ref) or 1.0
    g = _element(binding, dtype)

    def change(only=None) -> float:
        moved = _with_leaves(params, binding.paths, _act(binding, g, theta, only))
        return max(float(jnp.abs(a - b).max()) for a, b in zip(outputs(moved), ref)) / scale

    joint = change()
    if joint > tol:
        for f, fam in enumerate(binding.families):
            c = change([f])
            if c > tol:
                raise GaugeError(fam.family.gauge, fam.name, f"not a symmetry of this model: the loss changes by "
                                 f"{c:.1e} (relative) under a random group element (tolerance {tol:.1e})")
    weights = [jnp.asarray(np.random.default_rng(1).standard_normal(t.shape), dtype=t.dtype) for t in ref]
    grads = jax.grad(lambda p: sum((t * w).sum() for t, w in zip(outputs(p), weights)))(params)
    grad = _entries(binding, _leaves_of(grads, binding.paths))
    theta_e = _entries(binding, theta)
    worst = 0.0
    for fam in binding.families:
        c = jnp.abs(fam.coords(theta_e, grad))
        floor = fam.noise_floor(theta_e, grad, tol)
        ratio = float((c / (floor / tol + jnp.finfo(floor.dtype).tiny)).max())
        worst = max(worst, ratio)
        if bool((c > floor).any()):
            raise GaugeError(fam.family.gauge, fam.name, f"not a symmetry of this model: the loss gradient is not "
                             f"orthogonal to the orbit (|⟨∇L, X⟩| = {ratio:.1e} of |X|ᵀ|∇L|)")
    for fam in binding.families:
        if bool(fam.degenerate(theta_e, fam.frame(theta_e)).all()):
            raise GaugeError(fam.family.gauge, fam.name, "not a symmetry of this model: every unit's orbit is "
                             "degenerate at these parameters: there is no canonical frame to condition with")
    a, b = _canonical(binding, theta), _canonical(binding, _act(binding, g, theta))
    frame = max(_gap(x, y) for x, y in zip(a, b))
    if not frame <= float(jnp.finfo(dtype).eps) ** 0.5:  # the frames run in the leaves' dtype
        raise _composite_culprit(binding, g, theta, theta_e, frame)
    return (f"{jnp.dtype(dtype).name}: loss change {joint:.1e} under a random group element, tangency {worst:.1e}, "
            f"canonical points agree to {frame:.1e} (tolerance {tol:.1e})")


def _composite_culprit(binding, g, theta: list, theta_e: list, frame: float) -> GaugeError:
    """The error for a composite frame check that failed: the first family (binding order) whose addition to those
    before it breaks the composite canonical point, as torch's check finds it, with its degenerate units named
    (a head whose rows span fewer than d_head dimensions: its frame is undefined there and the rotation does not
    fix it). ``gj.bind`` refuses the family the error names and binds the rest."""
    import dataclasses

    fams = list(binding.families)
    bad_at = len(fams) - 1
    for k in range(len(fams)):
        sub = dataclasses.replace(binding, families=tuple(fams[: k + 1]))
        a, b = _canonical(sub, theta), _canonical(sub, _act(binding, g, theta, list(range(k + 1))))
        if not max(_gap(x, y) for x, y in zip(a, b)) <= float(jnp.finfo(theta[0].dtype).eps) ** 0.5:
            bad_at = k
            break
    fam = fams[bad_at]
    deg = np.flatnonzero(np.asarray(fam.degenerate(theta_e, fam.frame(theta_e)))).tolist()
    where = (f"; its units {deg} are degenerate here (a head whose rows span fewer than d_head dimensions, a zero "
             f"plane: the frame is undefined there and the group does not fix them)" if deg else "")
    return GaugeError(fam.family.gauge, fam.name, f"the composite canonical frame is not equivariant with the "
                      f"families before it on this model (canonical points differ by {frame:.1e}){where}")


def _gap(x, y) -> float:
    """``max|x − y| / max|x|`` where the canonical point is defined (a zero unit's frame is not, in
    both runs alike: not a failure of equivariance)."""
    fx, fy = np.isfinite(np.asarray(x)), np.isfinite(np.asarray(y))
    if not np.array_equal(fx, fy):
        return float("inf")
    if not fx.any():
        return 0.0
    x, y = np.asarray(x)[fx], np.asarray(y)[fx]
    return float(np.abs(x - y).max()) / (float(np.abs(x).max()) or 1.0)


def _canonical(binding, leaves: list) -> list:
    """The composed canonical point of the bound leaves (work layout)."""
    return canonical_point(binding, _entries(binding, leaves))[0][: len(leaves)]


def canonical_point(binding, ents: list) -> tuple[list, list]:
    """``(h(θ)·θ, [(family, h), …] in the order applied)`` on work entries, as the optimizer computes it
    (:func:`~.balance.canonicalise`: the binding's ``frames``; degenerate units given the identity frame)."""
    from .._balance import balanced_order
    from .balance import JointBalance, canonicalise

    fams = list(binding.families)
    balance = None
    if binding.frames == "balanced":
        fams = [fams[i] for i in balanced_order(fams)]
        names = binding.entry_names()
        balance = JointBalance(fams, names, [binding.layout.base(i) for i in range(len(names))])
    ents, _, frames, _, _ = canonicalise(fams, ents, binding.layout, balance)
    return ents, list(zip(fams, frames))
