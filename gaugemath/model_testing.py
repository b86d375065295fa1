"""Property tests of *your* torch model and optimizer under the gauges bound to it.

Re-exported by :mod:`gaugemath.testing` (``import gaugemath.testing as gt``). Given a model and its
verified :func:`~gaugemath.backends.torch.bind` ing:

* :func:`binding_elements`: a Hypothesis strategy for group elements of the bound gauges (each family,
  or a product of all), shrinking towards the identity — a failing test shrinks to the fewest, smallest
  non-identity coordinates (typically one unit of one family);
* :func:`apply_gauge` / :func:`transform_gradient`: the group action on a model's parameters, ``θ ← g·θ``,
  and on a gradient as a covector, ``∇ ← D(g)^{-T} ∇`` (the binder's own action, ``Binding.act``);
* :func:`assert_model_invariant`: ``loss(g·θ) = loss(θ)``;
* :func:`assert_optimizer_equivariant`: the ddc.md protocol — run A from ``θ``, run B from ``g·θ``
  receiving A's gradients transformed as covectors, both stepped by fresh optimizers from
  ``make_optimizer`` (stateful ones included) for every batch; ``θ_B,t = g·θ_A,t`` at every step;
* :func:`assert_gd_charge_law`: the exact Noether-charge law of one gradient step on your model.

Tolerances: ``√ε`` of the parameters' dtype (``1.5e-8`` for float64, ``3.5e-4`` for float32), the
binder's own margin (:mod:`gaugemath.backends.torch.check`): an exact symmetry or equivariant
optimizer moves by round-off, ``ε`` times the depth of the computation and the number of steps
(1e-16 … 1e-12 measured in float64 over 8 steps), a broken one by the size of the gauge's effect
(1e-3 … 1 measured). Every failure message states the tolerance, the parameter and step at fault, and
the non-identity part of ``g``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from hypothesis import strategies as st

__all__ = ["apply_gauge", "assert_gd_charge_law", "assert_model_invariant", "assert_optimizer_equivariant",
           "binding_elements", "describe_element", "transform_gradient"]


def _floats(lo: float, hi: float) -> st.SearchStrategy[float]:
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False)


def binding_elements(binding, spread: float = 1.5, families: Sequence[str] | None = None) -> st.SearchStrategy[list]:
    """Group elements of ``binding``'s gauges, as :meth:`Binding.act` takes them (float64 tensors, one entry
    per family). Per unit: a scale ``e^a``, ``a ∈ [−spread, spread]``; a translation in ``[−spread, spread]``;
    a RoPE plane angle in ``[−π, π]``; a head rotation ``exp(A)``, ``A`` skew with entries in
    ``[−spread, spread]``. Every coordinate shrinks to the identity (0). ``families``: only these (by
    name); the identity on the others."""
    import torch

    chosen = None if families is None else set(families)
    unknown = (chosen or set()) - {f.name for f in binding.families}
    if unknown:
        raise ValueError(f"families {sorted(unknown)} are not in the binding: {[f.name for f in binding.families]}")

    def family(fam) -> st.SearchStrategy:
        n = fam.units
        if chosen is not None and fam.name not in chosen:
            return st.just(_identity(fam))
        if fam.kind == "scale":
            return st.lists(_floats(-spread, spread), min_size=n, max_size=n).map(
                lambda a: torch.exp(torch.tensor(a, dtype=torch.float64)))
        if fam.kind == "translate":
            return st.lists(_floats(-spread, spread), min_size=n, max_size=n).map(
                lambda v: torch.tensor(v, dtype=torch.float64))
        if fam.kind == "plane":
            def plane(t):
                angle = torch.tensor(t, dtype=torch.float64)
                return torch.cos(angle), torch.sin(angle)

            return st.lists(_floats(-math.pi, math.pi), min_size=n, max_size=n).map(plane)
        d = fam.d_head
        size = n * d * d

        def rotation(v):
            a = torch.tensor(v, dtype=torch.float64).reshape(n, d, d)
            return torch.linalg.matrix_exp(a - a.transpose(1, 2))

        return st.lists(_floats(-spread, spread), min_size=size, max_size=size).map(rotation)

    return st.tuples(*[family(f) for f in binding.families]).map(list)


def _identity(fam):
    import torch

    n = fam.units
    if fam.kind == "scale":
        return torch.ones(n, dtype=torch.float64)
    if fam.kind == "translate":
        return torch.zeros(n, dtype=torch.float64)
    if fam.kind == "plane":
        return torch.ones(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
    return torch.eye(fam.d_head, dtype=torch.float64).expand(n, -1, -1).clone()


def describe_element(binding, g: list) -> str:
    """The non-identity part of ``g``: per family, the units it moves and by how much."""
    import torch

    parts = []
    for fam, h in zip(binding.families, g):
        ident = _identity(fam)
        if fam.kind == "plane":
            moved = torch.nonzero(h[1] != 0).flatten().tolist()
            show = [f"{k}: angle {math.atan2(float(h[1][k]), float(h[0][k])):.3g}" for k in moved[:4]]
        elif fam.kind == "head":
            moved = torch.nonzero((h - ident).abs().amax((1, 2)) > 0).flatten().tolist()
            show = [f"head {k}" for k in moved[:4]]
        else:
            moved = torch.nonzero(h != ident).flatten().tolist()
            verb = "×" if fam.kind == "scale" else "+"
            show = [f"{k}: {verb}{float(h[k]):.3g}" for k in moved[:4]]
        if moved:
            more = f" (+{len(moved) - 4} more)" if len(moved) > 4 else ""
            parts.append(f"{fam.name} ({fam.family.gauge}) units {', '.join(show)}{more}")
    return "; ".join(parts) or "the identity"


def _cast(g: list, dtype) -> list:
    return [tuple(x.to(dtype) for x in h) if isinstance(h, tuple) else h.to(dtype) for h in g]


def _is_jax(binding) -> bool:
    return type(binding).__name__ == "JaxBinding"


def _jax_g(g: list, dtype) -> list:
    import jax.numpy as jnp

    return [tuple(jnp.asarray(x.numpy(), dtype) for x in h) if isinstance(h, tuple) else jnp.asarray(h.numpy(), dtype)
            for h in g]


def _jax_act(params, binding, g: list, covector: bool = False):
    """``g·params`` (a new pytree; ``covector``: the gradient rule) for a JAX binding."""
    import jax

    from gaugemath.backends.jax.binding import leaf_paths

    flat, treedef = jax.tree_util.tree_flatten(params)
    where = {p: i for i, p in enumerate(leaf_paths(params))}
    idx = [where[p] for p in binding.paths]
    moved = binding.act(_jax_g(g, flat[idx[0]].dtype), [flat[i] for i in idx], covector=covector)
    for i, v in zip(idx, moved):
        flat[i] = v
    return jax.tree_util.tree_unflatten(treedef, flat)


def apply_gauge(model, binding, g: list):
    """In place: the bound parameters of ``model`` (``binding`` was made from it, or from a copy with the
    same parameter names) become ``g·θ``. JAX (``binding`` from ``gaugemath.backends.jax.bind``): ``model``
    is the parameter pytree and the moved pytree is returned."""
    if _is_jax(binding):
        return _jax_act(model, binding, g)
    import torch

    named = dict(model.named_parameters(remove_duplicate=False))
    params = [named[n] for n, _ in binding.params]
    with torch.no_grad():
        binding.act(_cast(g, params[0].dtype), params)


def transform_gradient(binding, g: list, grads):
    """In place: gradients (one per bound parameter, binding order) become ``D(g)^{-T} ∇`` — the gradient
    at ``g·θ`` of a gauge-invariant loss. JAX: ``grads`` is the gradient pytree; the transformed one is
    returned."""
    if _is_jax(binding):
        return _jax_act(grads, binding, g, covector=True)
    import torch

    with torch.no_grad():
        binding.act(_cast(g, grads[0].dtype), grads, covector=True)


def _tolerance(dtype) -> float:
    import torch

    return torch.finfo(dtype).eps ** 0.5


def assert_model_invariant(model, binding, example, g: list, loss: Callable | None = None,
                           rtol: float | None = None) -> None:
    """``loss(model_{g·θ}(example)) = loss(model_θ(example))`` to ``rtol`` (default ``√ε`` of the model's
    dtype) relative to ``max|loss|``. ``loss``: ``output → tensor`` (default: the output itself);
    ``example``: a tensor, a tuple of inputs or a dict of keyword inputs. The model is not changed.
    JAX: ``model = (apply, params)`` with ``apply(params, *example) -> output``."""
    if _is_jax(binding):
        return _jax_invariant(model, binding, example, g, loss, rtol)
    import torch

    from gaugemath.backends.torch.binding import _example  # bind()'s own reading of an example

    args, kwargs = _example(model, example)
    moved = copy.deepcopy(model)
    apply_gauge(moved, binding, g)
    target = loss or (lambda out: out)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        a = target(model(*args, **kwargs))
        torch.manual_seed(0)
        b = target(moved(*args, **kwargs))
    tol = _tolerance(next(model.parameters()).dtype) if rtol is None else rtol
    err = float((a - b).abs().max()) / max(float(a.abs().max()), 1e-300)
    if not err <= tol:
        raise AssertionError(f"loss not invariant under g = {describe_element(binding, g)}: relative change "
                             f"{err:.3e} > tolerance {tol:.1e}")


def assert_optimizer_equivariant(make_optimizer: Callable[[Any], Any], model, binding, batches: Iterable,
                                 g: list, loss_fn: Callable[[Any, Any], Any], rtol: float | None = None) -> float:
    """The ddc.md protocol on your model and optimizer; returns the worst deviation.

    ``make_optimizer(model) -> optimizer`` (any ``torch.optim.Optimizer``, stateful or not; called on
    two deep copies of ``model``); ``loss_fn(model, batch) -> scalar``; one step per batch. Run A steps
    on its own gradients; run B starts at ``g·θ`` and receives A's gradients transformed as covectors
    (unbound parameters: the same gradient). After every step ``‖θ_B − g·θ_A‖ / ‖g·θ_A‖`` per bound
    parameter must be at most ``rtol`` (default ``√ε`` of the dtype).

    JAX: ``make_optimizer`` is an optax ``GradientTransformation``, ``model`` the parameter pytree and
    ``loss_fn(params, batch) -> scalar`` (differentiated with ``jax.grad``)."""
    if _is_jax(binding):
        return _jax_equivariant(make_optimizer, model, binding, batches, g, loss_fn, rtol)
    import torch

    model_a, model_b = copy.deepcopy(model), copy.deepcopy(model)
    apply_gauge(model_b, binding, g)
    opt_a, opt_b = make_optimizer(model_a), make_optimizer(model_b)
    names = [n for n, _ in binding.params]
    named_a = dict(model_a.named_parameters(remove_duplicate=False))
    named_b = dict(model_b.named_parameters(remove_duplicate=False))
    bound_a, bound_b = [named_a[n] for n in names], [named_b[n] for n in names]
    bound = set(names)
    tol = _tolerance(bound_a[0].dtype) if rtol is None else rtol
    worst = 0.0
    for step, batch in enumerate(batches, 1):
        opt_a.zero_grad()
        opt_b.zero_grad()
        loss_fn(model_a, batch).backward()
        with torch.no_grad():
            grads = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in bound_a]
            transform_gradient(binding, g, grads)
            for p, gr in zip(bound_b, grads):
                p.grad = gr
            for n, p in named_a.items():
                if n not in bound and p.grad is not None:
                    named_b[n].grad = p.grad.clone()
        opt_a.step()
        opt_b.step()
        with torch.no_grad():
            image = [p.detach().clone() for p in bound_a]
            binding.act(_cast(g, image[0].dtype), image)
            for n, p, q in zip(names, bound_b, image):
                dev = float((p - q).norm()) / max(float(q.norm()), 1e-300)
                if not dev <= tol:  # (a NaN fails too)
                    raise AssertionError(
                        f"optimizer not equivariant: {n} deviates from its gauge image by {dev:.3e} (relative) at "
                        f"step {step} > tolerance {tol:.1e} (√ε of {str(q.dtype).replace('torch.', '')}); "
                        f"g = {describe_element(binding, g)}")
                worst = max(worst, dev)
    return worst


def _jax_invariant(model, binding, example, g, loss, rtol) -> None:
    import jax.numpy as jnp

    apply, params = model
    args = example if isinstance(example, tuple) else (example,)
    target = loss or (lambda out: out)
    a, b = target(apply(params, *args)), target(apply(_jax_act(params, binding, g), *args))
    tol = float(jnp.finfo(jnp.asarray(a).dtype).eps) ** 0.5 if rtol is None else rtol
    err = float(jnp.max(jnp.abs(a - b))) / max(float(jnp.max(jnp.abs(a))), 1e-300)
    if not err <= tol:
        raise AssertionError(f"loss not invariant under g = {describe_element(binding, g)}: relative change "
                             f"{err:.3e} > tolerance {tol:.1e}")


def _jax_equivariant(tx, params, binding, batches, g, loss_fn, rtol) -> float:
    import jax
    import jax.numpy as jnp
    import optax

    from gaugemath.backends.jax.binding import leaf_paths

    pa, pb = params, _jax_act(params, binding, g)
    sa, sb = tx.init(pa), tx.init(pb)
    where = {p: i for i, p in enumerate(leaf_paths(params))}
    idx = [where[p] for p in binding.paths]
    grad = jax.grad(loss_fn)
    worst, tol = 0.0, None
    for step, batch in enumerate(batches, 1):
        ga = grad(pa, batch)
        ua, sa = tx.update(ga, sa, pa)
        ub, sb = tx.update(_jax_act(ga, binding, g, covector=True), sb, pb)
        pa, pb = optax.apply_updates(pa, ua), optax.apply_updates(pb, ub)
        image = jax.tree_util.tree_leaves(_jax_act(pa, binding, g))
        leaves_b = jax.tree_util.tree_leaves(pb)
        for i in idx:
            q, p = image[i], leaves_b[i]
            tol = (float(jnp.finfo(q.dtype).eps) ** 0.5 if rtol is None else rtol) if tol is None else tol
            dev = float(jnp.linalg.norm((p - q).ravel())) / max(float(jnp.linalg.norm(q.ravel())), 1e-300)
            if not dev <= tol:
                raise AssertionError(
                    f"optimizer not equivariant: {binding.paths[idx.index(i)]} deviates from its gauge image by "
                    f"{dev:.3e} (relative) at step {step} > tolerance {tol:.1e} (√ε of {q.dtype}); "
                    f"g = {describe_element(binding, g)}")
            worst = max(worst, dev)
    return worst


def assert_gd_charge_law(model, binding, loss_fn: Callable[[Any, Any], Any], batch, lr: float = 1e-2,
                         rtol: float | None = None) -> None:
    """The Noether charges of the bound scale and shift gauges under one plain gradient step
    ``θ' = θ − η∇L`` on ``model`` (torch, not changed): ``Q'_k = Q_k + η² Σ_slice e g²`` for a scale unit
    (``Q_k = Σ_slice e θ²``, ``e = ±1`` the exponent), ``Q'_k = Q_k`` for a shift (``Q_k = 2 Σ_slice θ``) —
    exact laws (theory.md §2.3) that hold iff the loss gradient is orthogonal to the orbit
    (``⟨X_k, ∇L⟩ = 0``): a test of the gauge on *your* model and loss. Tolerance ``rtol`` (default ``√ε``)
    relative to ``Σ|e|θ² + 2η Σ|θ g| + η² Σ g²`` per unit (the sizes of the terms that cancel)."""
    import torch

    from gaugemath.observe import charges

    m = copy.deepcopy(model)
    named = dict(m.named_parameters(remove_duplicate=False))
    bound = [named[n] for n, _ in binding.params]
    loss_fn(m, batch).backward()
    grads = [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in bound]
    theta = binding.entries(binding.to_work([p.detach() for p in bound], torch.float64))
    g = binding.entries(binding.to_work(grads, torch.float64))
    after = binding.entries([t - lr * d for t, d in zip(theta[: len(bound)], g[: len(bound)])])
    q0, q1 = charges(binding, theta), charges(binding, after)
    tol = _tolerance(bound[0].dtype) if rtol is None else rtol
    for fam in binding.families:
        if fam.kind not in ("scale", "translate"):
            continue
        law = lr**2 * fam.coords(g, g) if fam.kind == "scale" else torch.zeros_like(q0[fam.name])
        size = fam._abs_coords(theta, theta) + 2 * lr * fam._abs_coords(theta, g) + lr**2 * fam._abs_coords(g, g)
        err = (q1[fam.name] - q0[fam.name] - law).abs() / size.clamp_min(1e-300)
        k = int(err.argmax())
        if not float(err[k]) <= tol:
            raise AssertionError(f"charge law broken for {fam.name} ({fam.family.gauge}) unit {k}: "
                                 f"Q' − Q − η²Σeg² = {float(q1[fam.name][k] - q0[fam.name][k] - law[k]):.3e}, "
                                 f"{float(err[k]):.3e} relative > tolerance {tol:.1e} (the loss gradient is not "
                                 "orthogonal to this orbit)")
