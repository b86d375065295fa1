"""Check a binding on the model itself, in fp64: nothing is bound on the graph's word alone.

Three checks, on a float64 copy of the model and the user's example (dropout and other random
operations see the same random stream in every forward pass):

1. **Invariance.** A random element ``g`` of the bound group (scales ``e^{U(-1.5, 1.5)}``,
   translations, plane angles, Haar-orthogonal heads) applied to the parameters leaves the
   training target unchanged: ``max|T(g·θ) − T(θ)| ≤ tol · max|T(θ)|``.
2. **Tangency.** The loss gradient is orthogonal to every orbit direction:
   ``|⟨∇L, X_k⟩| ≤ tol · (|X_k|ᵀ|∇L|)`` per unit (:meth:`BoundFamily.noise_floor`).
3. **Composite frame.** The canonical point of the composed frames is the same at ``θ`` and at
   ``g·θ``: ``max|θ̃(g·θ) − θ̃(θ)| ≤ tol · max|θ̃(θ)|`` per tensor — the equivariance the
   optimizer's exactness rests on, checked for this composition on this model.

``tol = √ε_fp64 ≈ 1.5e-8``. An exact symmetry moves an fp64 forward pass by round-off, about
``ε`` times the depth of the computation (1e-16 … 1e-13 measured on the models in the tests); a
broken one by the size of the gauge's effect (1e-4 … 1 measured: RoPE pairing mistaken, a tied
head, a post-norm residual). ``√ε`` separates the two with six orders of magnitude on either side.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from gaugemath.errors import GaugeError
from gaugemath.structure.detect import Refusal

TOL = torch.finfo(torch.float64).eps ** 0.5


def _double(x):
    if isinstance(x, Tensor) and x.is_floating_point():
        return x.double()
    if isinstance(x, dict):
        return {k: _double(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_double(v) for v in x)
    return x


def _leaves(out) -> list[Tensor]:
    return [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, Tensor) and t.is_floating_point()]


def _change(new: list[Tensor], ref: list[Tensor]) -> float:
    scale = max(float(r.abs().max()) if r.numel() else 0.0 for r in ref) or 1.0
    return max(float((n - r).abs().max()) if r.numel() else 0.0 for n, r in zip(new, ref)) / scale


def check_binding(model: nn.Module, binding, specs: Sequence, args: tuple, kwargs: dict, target: Callable,
                  seed: int = 0, strict: bool = False, prefix: str = "", families: dict | None = None):
    """The binding with every family that fails a check removed (and listed in ``refusals``);
    ``strict`` (explicit specs): raise a :class:`GaugeError` for the first failure instead. ``families``: the
    family table the specs name (default the generated catalogue; discovered families add their own)."""
    from .._compose import spec_of_family
    from .binding import _build, _named

    m64 = copy.deepcopy(model).double()
    named = _named(m64)
    bound = [named[n[len(prefix):]] for n, _ in binding.params]
    args, kwargs = _double(args), _double(kwargs)
    target = _per_example(target)
    theta0 = [p.detach().clone() for p in bound]

    def forward(grad: bool = False) -> list[Tensor]:
        with torch.random.fork_rng(devices=[]), torch.set_grad_enabled(grad):
            torch.manual_seed(seed)
            return _leaves(target(m64(*args, **kwargs)))

    def restore() -> None:
        with torch.no_grad():
            for p, t in zip(bound, theta0):
                p.copy_(t)

    ref = forward()
    tol = max(torch.finfo(t.dtype).eps for t in ref) ** 0.5 if ref else TOL  # √ε of the target's dtype
    gen = torch.Generator().manual_seed(seed)
    g = binding.random_element(gen, torch.float64)
    fams = binding.families
    failures: dict[int, str] = {}

    binding.act(g, bound)
    joint = _change(forward(), ref)
    restore()
    if joint > tol:
        for f in range(len(fams)):
            binding.act(g, bound, only=[f])
            change = _change(forward(), ref)
            restore()
            if change > tol:
                failures[f] = f"the loss changes by {change:.1e} (relative) under a random group element (fp64, " \
                              f"tolerance {tol:.1e})"
    # tangency: ⟨∇L, X_k⟩ = 0 for an invariant loss
    for p in m64.parameters():
        p.grad = None
    out = forward(grad=True)
    weights = [torch.randn(t.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=t.dtype) for t in out]
    scalar = sum((t * w).sum() for t, w in zip(out, weights))
    grads = torch.autograd.grad(scalar, bound, allow_unused=True)
    grads = [torch.zeros_like(p) if gr is None else gr for p, gr in zip(bound, grads)]
    theta_e = binding.entries(binding.to_work(theta0))
    grad_e = binding.entries(binding.to_work(grads))
    worst_tangent = 0.0
    for f, fam in enumerate(fams):
        c = fam.coords(theta_e, grad_e)
        floor = fam.noise_floor(theta_e, grad_e, tol)
        excess = float(((c.abs() - floor) / (floor + torch.finfo(torch.float64).tiny)).max())
        ratio = float((c.abs() / (floor / tol + torch.finfo(torch.float64).tiny)).max())
        worst_tangent = max(worst_tangent, ratio)
        if excess > 0 and f not in failures:
            failures[f] = f"the loss gradient is not orthogonal to the orbit (|⟨∇L, X⟩| = {ratio:.1e} of |X|ᵀ|∇L|)"
    # a family whose every unit is degenerate here (e.g. heads wider than [W_Q | W_K] can span) has nothing to
    # condition: its frame is the identity everywhere, so it is refused rather than bound as a no-op
    theta_w = binding.entries(binding.to_work(theta0))
    for f, fam in enumerate(fams):
        if f not in failures and bool(fam.degenerate(theta_w, fam.frame(theta_w)).all()):
            failures[f] = ("every unit's orbit is degenerate at these parameters (a zero unit, or heads whose rows "
                           "cannot span d_head dimensions): there is no canonical frame to condition with")
    # the composite canonical point, on the families that passed
    alive = [f for f in range(len(fams)) if f not in failures]

    def gap(families: list[int]) -> float:
        moved = [t.clone() for t in theta0]
        binding.act(g, moved, only=families)
        a, b = _canonical(binding, theta0, families), _canonical(binding, moved, families)
        return max((_frame_gap(x, y) for x, y in zip(a, b)), default=0.0)

    worst_frame = gap(alive) if alive else 0.0
    if worst_frame > TOL:  # the frames run in fp64 whatever the target's dtype
        # find the culprits: add the families in binding order, refusing each whose addition breaks the
        # composite (so the blame falls on the family at fault, not on whichever happens to be last); the
        # binding without them is then built and checked again, which reports its own worst frame gap
        kept: list[int] = []
        for f in alive:
            here = gap(kept + [f])
            if here <= TOL:
                kept.append(f)
                continue
            bad = fams[f].degenerate(theta_w, fams[f].frame(theta_w))
            where = (f"; its units {bad.nonzero().flatten().tolist()} are degenerate here (a head whose rows "
                     f"span fewer than d_head dimensions, a zero plane: the frame is undefined there and the "
                     f"group does not fix them)" if bool(bad.any()) else "")
            failures[f] = (f"the composite canonical frame is not equivariant with the families before it "
                           f"(canonical points differ by {here:.1e}){where}")
    if not failures:
        binding.checked = (f"fp64: loss change {joint:.1e} under a random group element, tangency "
                           f"{worst_tangent:.1e}, canonical points agree to {worst_frame:.1e} (tolerance {tol:.1e})")
        return binding
    bad_names = {fams[f].name: reason for f, reason in failures.items()}
    if strict:
        name, reason = next(iter(bad_names.items()))
        fam = next(f for f in fams if f.name == name)
        raise GaugeError(fam.family.gauge, name, f"not a symmetry of this model: {reason}")
    bad_specs = [spec_of_family(n, specs) for n in bad_names]
    keep = [s for s in specs if all(s is not b for b in bad_specs)]
    refusals = list(binding.refusals) + [
        Refusal(next(f.family.gauge for f in fams if f.name == n), n, r) for n, r in bad_names.items()]
    rebuilt = _build(model, keep, prefix, families)
    rebuilt.frames = binding.frames
    rebuilt.refusals = refusals
    if rebuilt.families:
        return check_binding(model, rebuilt, keep, args, kwargs, target, seed, strict, prefix, families)
    return rebuilt


def _per_example(target: Callable) -> Callable:
    """Check against the per-example log-probabilities where the target is a loss over logits.

    A Hugging Face loss is a function of ``log_softmax(logits)`` (and is computed in fp32 even for
    an fp64 model, which would hide changes below 1e-7); a gauge of the loss on every batch is a
    gauge of the log-probabilities, which are computed in fp64 and are a stronger check.
    """

    def check_target(out):
        logits = out.get("logits") if isinstance(out, dict) else getattr(out, "logits", None)
        loss = out.get("loss") if isinstance(out, dict) else getattr(out, "loss", None)
        value = target(out)
        if isinstance(logits, Tensor) and isinstance(loss, Tensor) and value is loss:
            return torch.log_softmax(logits, dim=-1)
        return value

    return check_target


def _frame_gap(x: Tensor, y: Tensor) -> float:
    """``max|x − y| / max|x|`` over the entries where the canonical point is defined; a degenerate
    orbit (a zero unit: the frame is undefined there, in both runs alike) is not a failure of
    equivariance, but a point defined in one run and not in the other is."""
    fx, fy = torch.isfinite(x), torch.isfinite(y)
    if not torch.equal(fx, fy):
        return float("inf")
    if not bool(fx.any()):
        return 0.0
    return float((x[fx] - y[fx]).abs().max()) / (float(x[fx].abs().max()) or 1.0)


def _canonical(binding, tensors: list[Tensor], only: list[int]) -> list[Tensor]:
    """The composed canonical point of families ``only``, computed as the optimizer computes it
    (:func:`~.balance.canonicalise`: the binding's ``frames``, degenerate units given the identity)."""
    ents = binding.entries(binding.to_work(tensors))
    canonical_point(binding, ents, only)
    return ents[: len(tensors)]


def canonical_point(binding, ents: list[Tensor], only: Sequence[int] | None = None) -> list:
    """In place on work entries ``ents``: ``θ ← h(θ)·θ`` for families ``only`` (default all) in the
    optimizer's order; returns ``(family, h)`` pairs in the order applied."""
    from .._balance import balanced_order
    from .balance import JointBalance, canonicalise
    from .batching import Batch

    fams = [binding.families[f] for f in (range(len(binding.families)) if only is None else only)]
    balance = None
    if binding.frames == "balanced":
        fams = [fams[i] for i in balanced_order(fams)]
        names = binding.entry_names()
        balance = JointBalance(fams, names, [binding.layout.base(i) for i in range(len(names))])
    batches = [Batch([f], fam, fam.units) for f, fam in enumerate(fams)]
    frames, _, _ = canonicalise(batches, ents, None, balance)
    return list(zip(fams, frames))
