"""Symmetry teleportation (seed 001, [Z] Alg. 1; ``../shared/spec/theory.md`` §3.1) on a bound model.

Teleporting moves the parameters along their gauge orbit, ``θ ← g·θ``, to a point where the gradient is
larger; the loss is unchanged (to round-off: the action is the exact group action of the binding, proved or
checked at bind time). ``g`` maximises ``‖∇L(g·θ)‖²_A`` (``A = I``: the L2 norm, ``norm="l2"``; or AdaGrad's
metric ``A = (ε + G)^{-1/2}``, ``norm="adagrad"``, [Z] Eq. 5.7) by gradient ascent on the group's coordinates
``ξ`` (log-scales, plane angles, skew head generators; ``g = exp(ξ)``).

No extra forward or backward pass is needed. For an invariant loss ``L(g·θ) = L(θ)`` the gradient transforms
as a covector, ``∇L(g·θ) = D(g)^{-T} ∇L(θ)``, so the objective at every candidate ``g`` is a closed-form function
of the one gradient the caller computed: ``F(g) = ‖D(g)^{-T} ∇L(θ)‖²_A``. The ascent is on ``log F`` (the same
maximisers and ascent directions as ``F``; the step does not depend on the gradient's scale), one small group
element per step: ``δ = lr ∂_δ F / F`` at the current point, in closed form per family (:func:`_direction`),
applied to the gradient by the covector rule and to the parameters by the group action, so the parameters are
moved by the product of the steps, an exact group element. For the abelian scalings this is the same iteration
as ``ξ ← ξ + lr ∇_ξ log F(e^ξ)`` (:func:`ascend`, autograd on any objective; the tests compare the two).

What the groups can do ([Z] Cor. 4.5.2): rotations (RoPE planes, heads) are orthogonal, ``D^{-T} = D``, so
they leave the L2 norm unchanged (useless for L2 teleport; they act on the AdaGrad norm); translations (the
cross-entropy shift) have ``D = I`` and change no gradient at all; the scalings (unit rescales, norm gains)
carry the whole L2 gain. Their objective is ``Σ_j A_j g_j² e^{−2 e_j·a}``, convex and unbounded in ``a``: the
ascent is bounded by its ``steps`` and ``lr`` (as in [Z]), not by a maximum.

Optimizer state (``state``, [Z] §5.4 compares the three): ``"keep"`` leaves it; ``"reset"`` clears the bound
parameters' state; ``"teleport"`` moves it with the parameters: first moments and momentum are gradient
averages, covectors (``m ← D^{-T} m``); second moments of a scaled coordinate scale by the square of its
covector factor (``v ← (D^{-T})² v``, exact for the diagonal scalings; for a rotation there is no exact rule,
so ``"teleport"`` refuses a non-trivial rotation when second moments are kept). A :class:`DDCAdam` keeps its
moments in canonical coordinates, which ``g`` does not change: its state is already the teleported one, and
``"teleport"`` leaves it (its joint balance's warm start, ``balance.<family>``, holds absolute log-scales, which a
teleport shifts by ``−log g``; it is only Newton's starting point, run to the floor from any start). (So DDCAdam,
being exactly equivariant, continues from ``g·θ`` as ``g`` times its
run from ``θ``: teleporting never changes its losses; ``tests/test_teleport.py`` checks it.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from gaugemath.errors import GaugeError

NORMS = ("l2", "adagrad")
STATES = ("keep", "reset", "teleport")


@dataclass
class Teleport:
    """What :func:`teleport` did: the objective ``F = ‖∇L‖²_A`` before and after (``history``: after each ascent
    step), the group element per family (in :meth:`Binding.act`'s form; ``None`` for a family left alone), and
    the loss before and after when a ``closure`` was given."""

    before: float
    after: float
    history: list[float] = field(default_factory=list)
    element: list = field(default_factory=list)
    loss_before: float | None = None
    loss_after: float | None = None

    @property
    def gain(self) -> float:
        """``F(g·θ) / F(θ)``: how much larger the (A-)squared gradient norm is at the teleported point."""
        return self.after / self.before if self.before > 0 else float("nan")


def ascend(objective: Callable[[list[Tensor]], Tensor], xi: list[Tensor], steps: int, lr: float) -> list[float]:
    """Gradient ascent on ``log objective(ξ)`` in place on the leaves ``ξ``; returns the objective after each step
    (``[F(ξ₀), F(ξ₁), …]``). The core of :func:`teleport`, usable with any differentiable ``objective`` (the
    quadratic oracle of [Z] Lemma 4.5.6 in the tests uses it directly)."""
    history = []
    for k in range(steps + 1):
        for x in xi:
            x.requires_grad_(True)
            x.grad = None
        value = objective(xi)
        history.append(float(value.detach()))
        if k == steps:
            break
        grads = torch.autograd.grad(torch.log(value), xi, allow_unused=True)
        with torch.no_grad():
            for x, g in zip(xi, grads):
                if g is not None:
                    x.add_(g, alpha=lr)
    for x in xi:
        x.requires_grad_(False)
    return history


def _direction(fam, ghat: list[Tensor], weights: list[Tensor] | None) -> Tensor | None:
    """``∂F/∂δ`` at ``δ = 0`` for ``ĝ ← D(e^δ)^{-T} ĝ`` along the family's generators, per unit, in closed form
    (``F = Σ A ĝ²``): a scale unit multiplies its slices of exponent ``e`` by ``e^{−eδ}``, so ``−2(S₊ − S₋)`` with
    ``S_± = Σ A ĝ²`` over the slices of each sign; a RoPE plane rotates its row pairs, ``∂(ĝ₀, ĝ₁) = (ĝ₁, −ĝ₀)``,
    so ``2Σ(A₀ − A₁)ĝ₀ĝ₁`` (zero for ``A = I``); a head's rows take ``e^S``, so along the generator ``E_ij − E_ji``
    the derivative ``2(M − Mᵀ)_{ij}`` with ``M = Σ_c (A ĝ)_{ic} ĝ_{jc}``. ``None``: translations (``D = I``: no
    gradient changes)."""
    if fam.kind == "translate":
        return None
    w = weights if weights is not None else [None] * len(ghat)
    if fam.kind == "scale":
        sides = fam.side_sums([g if a is None else g * a.sqrt() for g, a in zip(ghat, w)])
        zero = torch.zeros(fam.units, dtype=ghat[0].dtype, device=ghat[0].device)
        return -2 * (sides.get(1, zero) - sides.get(-1, zero))
    if fam.kind == "plane":
        total = torch.zeros(fam.units, dtype=ghat[0].dtype, device=ghat[0].device)
        if weights is None:
            return total
        for _, i in fam.members():
            g, a = ghat[i].reshape(fam.units, 2, -1), w[i].reshape(fam.units, 2, -1)
            total = total + 2 * ((a[:, 0] - a[:, 1]) * g[:, 0] * g[:, 1]).sum(1)
        return total
    m = 0
    for _, i in fam.members():
        g = ghat[i].reshape(fam.units, fam.d_head, -1)
        ag = g if w[i] is None else g * w[i].reshape(fam.units, fam.d_head, -1)
        m = m + ag @ g.transpose(1, 2)
    return 2 * (m - m.transpose(1, 2))


def _step_element(fam, direction: Tensor):
    """``e^δ`` for an ascent step ``δ`` (per-unit scales, ``(cos, sin)``, orthogonal heads)."""
    if fam.kind == "scale":
        return torch.exp(direction)
    if fam.kind == "plane":
        return torch.cos(direction), torch.sin(direction)
    return torch.linalg.matrix_exp(direction)


def _identity(fam, dtype, device):
    if fam.kind == "scale":
        return torch.ones(fam.units, dtype=dtype, device=device)
    if fam.kind == "plane":
        return torch.ones(fam.units, dtype=dtype, device=device), torch.zeros(fam.units, dtype=dtype, device=device)
    if fam.kind == "head":
        return torch.eye(fam.d_head, dtype=dtype, device=device).expand(fam.units, -1, -1).clone()
    return None


def _compose(fam, total, step):
    """``step · total`` (the step applied after): scales and plane angles add, head rotations multiply."""
    if fam.kind == "scale":
        return total * step
    if fam.kind == "plane":
        (c0, s0), (c1, s1) = total, step
        return c1 * c0 - s1 * s0, s1 * c0 + c1 * s0
    return step @ total


#: how each ``torch.optim`` state tensor moves with the parameters under ``state="teleport"``: a gradient average is
#: a covector (``D^{-T}``); a squared-gradient average takes ``(D^{-T})²`` and a max of ``|g|`` ``|D^{-T}|`` (exact
#: for the diagonal, positive scalings; rotations have no such rule); RMSprop's momentum holds ``g/√v``, which a
#: scaling leaves as it is (up to its ``ε``: ``g/(s + ε)``, relative ``ε/s``). Any other state tensor shaped like
#: its parameter is refused (no rule is known for it).
STATE_RULES: dict[str, dict[str, str]] = {
    "SGD": {"momentum_buffer": "covector"},
    "Adam": {"exp_avg": "covector", "exp_avg_sq": "square", "max_exp_avg_sq": "square"},
    "AdamW": {"exp_avg": "covector", "exp_avg_sq": "square", "max_exp_avg_sq": "square"},
    "NAdam": {"exp_avg": "covector", "exp_avg_sq": "square"},
    "RAdam": {"exp_avg": "covector", "exp_avg_sq": "square"},
    "Adamax": {"exp_avg": "covector", "exp_inf": "covector"},
    "Adagrad": {"sum": "square"},
    "RMSprop": {"square_avg": "square", "grad_avg": "covector", "momentum_buffer": "invariant"},
}


def _state_plan(optimizer, params: list[Tensor], names: list[str], binding) -> dict[str, str]:
    """``{state key: rule}`` for ``state="teleport"`` (:data:`STATE_RULES`), or a :class:`GaugeError` naming the
    optimizer, parameter and key with no rule; checked before anything changes."""
    kind = type(optimizer).__name__
    rules = STATE_RULES.get(kind)
    keys: dict[str, str] = {}
    for n, p in zip(names, params):
        for key, value in optimizer.state.get(p, {}).items():
            if not isinstance(value, Tensor) or value.shape != p.shape:
                continue  # step counts and other scalars do not move
            if rules is None or key not in rules:
                raise GaugeError(binding.gauge_of(p), n, f"state='teleport': no rule for {kind}'s state '{key}' "
                                 f"under the group action (known: {sorted(STATE_RULES)}); use state='keep' or 'reset'")
            keys[key] = rules[key]
    return keys


def teleport(model: nn.Module, binding, *, steps: int = 10, lr: float = 0.1, norm: str = "l2",
             optimizer: torch.optim.Optimizer | None = None, state: str = "keep",
             closure: Callable[[], Tensor] | None = None, adagrad_eps: float = 1e-10,
             dtype: torch.dtype = torch.float64) -> Teleport:
    """Teleport ``model``'s bound parameters along their gauge orbits to a larger ``‖∇L‖²_A``, in place.

    Args:
        model: the model ``binding`` was made for (its parameters are changed in place).
        binding: from :func:`gaugemath.backends.torch.bind`; its families define the group.
        steps, lr: gradient-ascent steps on ``log F`` and their size in the group coordinates: each step moves
            by ``e^δ`` with ``δ = lr · ∂F/∂δ / F`` per family (:func:`_direction`), applied to the gradient by
            the covector rule and to the parameters by the group action (so the parameters are moved by the
            product of the steps, an exact group element).
        norm: ``"l2"`` (``A = I``) or ``"adagrad"`` (``A = (adagrad_eps + G)^{-1/2}``, ``G`` the optimizer's
            accumulated squared gradients: Adagrad's ``sum`` or Adam's ``exp_avg_sq``; needs ``optimizer``).
        optimizer: the optimizer stepping ``model`` (for ``norm="adagrad"`` and ``state``).
        state: ``"keep"``, ``"reset"`` or ``"teleport"`` the optimizer state (module docstring).
        closure: re-evaluates the loss and fills ``.grad`` (as for ``optimizer.step``); without it the
            gradients already in ``.grad`` are used (the caller ran ``loss.backward()``). With it, the loss is
            also evaluated after teleporting (``Teleport.loss_after``), which refills ``.grad`` there.
        dtype: the ascent's working precision.

    Everything is checked before anything changes. The gradients in ``.grad`` are replaced by the teleported
    point's (``D(g)^{-T} ∇L``, what a backward pass there gives), so an optimizer step right after steps from
    the new point.
    """
    if norm not in NORMS:
        raise ValueError(f"norm={norm!r}: choose from {NORMS}")
    if state not in STATES:
        raise ValueError(f"state={state!r}: choose from {STATES}")
    if norm == "adagrad" and optimizer is None:
        raise ValueError("norm='adagrad' reads the optimizer's accumulated squared gradients: pass optimizer=")
    if norm == "adagrad" and _is_ddc(optimizer):
        raise GaugeError("teleport", type(optimizer).__name__, "norm='adagrad' needs squared gradients in the "
                         "parameters' coordinates; DDCAdam keeps its moments in canonical coordinates")
    params = [p for _, p in binding.params]
    names = [n for n, _ in binding.params]
    loss_before = None
    if closure is not None:
        with torch.enable_grad():
            loss_before = float(closure().detach())
    for n, p in zip(names, params):
        if p.grad is None:
            raise GaugeError(binding.gauge_of(p), n, "has no gradient: run loss.backward() (or pass closure=) "
                             "before teleporting")
        if not bool(torch.isfinite(p.grad).all()):
            raise GaugeError(binding.gauge_of(p), n, "non-finite gradient: nothing to teleport by")
    weights = None
    if norm == "adagrad":
        acc = []
        for n, p in zip(names, params):
            st = optimizer.state.get(p, {})
            key = "sum" if "sum" in st else "exp_avg_sq" if "exp_avg_sq" in st else None
            if key is None:
                raise GaugeError(binding.gauge_of(p), n, "norm='adagrad': the optimizer keeps no accumulated "
                                 "squared gradients for it (Adagrad's 'sum' or Adam's 'exp_avg_sq'; step once first)")
            acc.append(st[key].detach())
        weights = binding.entries([(adagrad_eps + g).rsqrt() for g in binding.to_work(acc, dtype)])
    fams = binding.families
    plan = {}
    if state == "teleport" and optimizer is not None and not _is_ddc(optimizer):
        plan = _state_plan(optimizer, params, names, binding)
        nonlinear = [k for k, rule in plan.items() if rule in ("square",) or k == "exp_inf"]
        if nonlinear and norm == "adagrad" and any(f.kind in ("plane", "head") for f in fams):
            raise GaugeError("teleport", next(f.name for f in fams if f.kind in ("plane", "head")),
                             f"state='teleport': '{nonlinear[0]}' has no exact rule under a rotation, which "
                             "norm='adagrad' moves; use state='keep' or 'reset', or norm='l2' (rotations do not "
                             "change the L2 norm and stay the identity)")
    device = params[0].device
    work = binding.to_work([p.detach() for p in params], dtype)
    ghat_work = binding.to_work([p.grad.detach() for p in params], dtype)
    theta, ghat = binding.entries(work), binding.entries(ghat_work)

    def objective() -> float:
        if weights is None:
            return float(sum((g * g).sum() for g in ghat_work))
        return float(sum((a * g * g).sum() for a, g in zip(weights, ghat_work)))

    history = [objective()]
    total = [_identity(f, dtype, device) for f in fams]
    moves: list[list] = []
    for _ in range(steps):
        value = history[-1]
        if not value > 0:
            break
        step = [None] * len(fams)
        for f, fam in enumerate(fams):
            d = _direction(fam, ghat, weights)
            if d is not None:
                step[f] = _step_element(fam, (lr / value) * d)
        for fam, h in zip(fams, step):
            if h is not None:
                fam.act(h, ghat, covector=True)
                fam.act(h, theta)
        total = [t if h is None else _compose(fam, t, h) for fam, t, h in zip(fams, total, step)]
        moves.append(step)
        history.append(objective())
    with torch.no_grad():
        for k, p in enumerate(params):
            p.copy_(binding.from_work(k, work[k]))
            p.grad.copy_(binding.from_work(k, ghat_work[k]))
        if optimizer is not None and state == "reset":
            for p in params:
                optimizer.state.pop(p, None)
        elif plan:
            for key, rule in plan.items():
                if rule == "invariant":
                    continue
                tensors = [optimizer.state[p][key] if key in optimizer.state.get(p, {}) else torch.zeros_like(p)
                           for p in params]
                for move in moves:  # one action over every bound tensor per move and key
                    acting = [f for f, h in enumerate(move) if h is not None]
                    if rule == "covector":
                        binding.act(move, tensors, covector=True, only=acting)
                    else:  # (D^{-T})² on the scalings (under "l2" the rotations' steps are round-off: left out)
                        scaled = [f for f in acting if fams[f].kind == "scale"]
                        for _ in range(2):
                            binding.act(move, tensors, covector=True, only=scaled)
    loss_after = None
    if closure is not None:
        for p in params:
            p.grad = None
        with torch.enable_grad():
            loss_after = float(closure().detach())
    return Teleport(history[0], history[-1], history, total, loss_before, loss_after)


def _is_ddc(optimizer) -> bool:
    from gaugemath.backends.torch.optim import DDCAdam

    return isinstance(optimizer, DDCAdam)
