"""Symmetry teleportation (seed 001; theory.md §3.1) against the seed's quadratic oracle and on models nobody here
wrote (HF Llama, nanoGPT re-typed), judged by the models' own forward and backward passes."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from gaugemath.backends.torch import DDCAdam, bind
from gaugemath.backends.torch.binding import Binding
from third_party import CASES, bind_case

from gaugemath import GaugeError
from gaugemath.models import tiny_gpt
from gaugemath.teleport import ascend, teleport

EPS = torch.finfo(torch.float64).eps
#: the ddc.md protocol's fp64 bar: an exact group action re-rounds every parameter, and the loss and gradient
#: of the model at g·θ differ from the exact ones by round-off of that order (measured ≤ 1e-15 here)
BAR = 1e-12


def test_quadratic_teleports_to_the_top_eigenvector_and_gd_stays_on_it():
    """E8 ([Z] Lemma 4.5.6, Prop. 4.5.7): for ``L = wᵀAw`` every level set is one orbit of ``O_A = {g : gᵀAg = A}``
    (here ``g(φ) = A^{-1/2} R(φ) A^{1/2}``); the point of largest ``‖∇L‖² = 4wᵀA²w`` on it is on the top eigenvector,
    where ``‖∇L‖² = 4 λ_max L``. Ascent (:func:`ascend`) from a generic ``w`` reaches it; ``L`` is unchanged; GD from
    there stays on the axis: its off-axis part, ``r₀`` after the teleport, grows at most by the ratio of the two
    contraction factors per step, ``|1 − 2ηλ₂| / |1 − 2ηλ₁|`` (the GD map is diagonal in the eigenbasis)."""
    lam = torch.tensor([3.0, 1.0], dtype=torch.float64)
    a, a_half, a_inv_half = torch.diag(lam), torch.diag(lam.sqrt()), torch.diag(lam.rsqrt())
    w = torch.tensor([0.3, -1.2], dtype=torch.float64)
    level = float(w @ a @ w)

    def g(phi):
        c, s = torch.cos(phi), torch.sin(phi)
        return a_inv_half @ torch.stack([torch.stack([c, -s]), torch.stack([s, c])]) @ a_half

    def objective(xi):
        v = g(xi[0][0]) @ w
        grad = 2 * a @ v
        return grad @ grad

    phi = [torch.zeros(1, dtype=torch.float64)]
    history = ascend(objective, phi, steps=200, lr=0.3)
    assert all(b >= a_ - 1e-12 * a_ for a_, b in zip(history, history[1:]))  # an ascent
    v = g(phi[0][0]) @ w
    assert abs(float(v @ a @ v) - level) <= 16 * EPS * level  # on the level set (an exact orbit)
    assert abs(history[-1] - 4 * lam.max().item() * level) <= 1e-12 * history[-1]
    off = abs(float(v[1])) / abs(float(v[0]))  # the top eigenvector is e₁
    assert off <= 1e-6  # ascent converges linearly near the maximum; 200 steps reach 1e-6 here
    eta = 0.05
    growth = abs(1 - 2 * eta * lam[1].item()) / abs(1 - 2 * eta * lam[0].item())
    x = v.clone()
    for t in range(1, 21):
        x = x - eta * 2 * a @ x
        assert abs(float(x[1])) / abs(float(x[0])) <= off * growth**t * (1 + 1e-12) + 64 * EPS * t


def _llama():
    return next(c for c in CASES if c.name == "llama")


def _prepared(case):
    torch.manual_seed(0)
    model = case.make()
    binding = bind_case(case, model)
    args, kwargs = case.batch(3)

    def closure():
        model.zero_grad()
        loss = case.loss(model, args, kwargs)
        loss.backward()
        return loss

    return model, binding, closure


@pytest.mark.parametrize("name", ["llama", "nanoGPT (flash)"])
def test_teleport_keeps_the_loss_and_raises_the_gradient_norm_the_model_itself_reports(name):
    """On a third-party model: after teleporting, the model's own loss is unchanged and its own backward pass gives
    the squared gradient norm (over the bound parameters) :func:`teleport` predicted from the covector rule, larger
    than before; the ascent increased it monotonically. Bound: the protocol's fp64 bar (module ``BAR``)."""
    case = next(c for c in CASES if c.name == name)
    model, binding, closure = _prepared(case)
    result = teleport(model, binding, steps=15, lr=0.2, closure=closure)
    assert result.gain > 1, result.history
    assert all(b >= a for a, b in zip(result.history, result.history[1:]))
    assert abs(result.loss_after - result.loss_before) <= BAR * abs(result.loss_before)
    measured = sum(float((p.grad.double() ** 2).sum()) for _, p in binding.params)  # closure ran at g·θ
    assert abs(measured - result.after) <= BAR * result.after, (measured, result.after)


def test_teleport_writes_the_gradient_a_backward_pass_at_the_new_point_gives():
    """``.grad`` after :func:`teleport` is ``D(g)^{-T}∇L``: equal to a fresh backward pass of the teleported model."""
    model, binding, closure = _prepared(_llama())
    closure()
    teleport(model, binding, steps=5, lr=0.2)
    written = [p.grad.clone() for p in model.parameters()]
    closure()
    for p, w in zip(model.parameters(), written):
        assert float((p.grad - w).abs().max()) <= BAR * float(p.grad.abs().max()) + 1e-300


def _rotations_only(binding: Binding) -> Binding:
    return Binding(binding.params, [f for f in binding.families if f.kind in ("plane", "head")], binding.layout,
                   frames=binding.frames)


def test_rotations_are_useless_for_l2_teleport_but_not_for_adagrad():
    """[Z] Cor. 4.5.2: rotations are orthogonal, so they leave ‖∇L‖₂ unchanged: with only the head and RoPE-plane
    families, L2 teleport finds nothing (its ascent gradient is round-off: the angles stay below 1e-12 and the
    gain is 1 to round-off). The AdaGrad norm is not rotation-invariant: there the same families raise it."""
    model, binding, closure = _prepared(_llama())
    rot = _rotations_only(binding)
    assert rot.families and all(f.kind in ("plane", "head") for f in rot.families)
    closure()
    result = teleport(model, rot, steps=10, lr=0.2)
    assert abs(result.gain - 1) <= BAR
    for fam, h in zip(rot.families, result.element):
        eye = torch.eye(fam.d_head, dtype=h.dtype).expand_as(h) if fam.kind == "head" else None
        assert eye is None or float((h - eye).abs().max()) <= 1e-12
    adagrad = torch.optim.Adagrad(model.parameters(), lr=1e-3)
    adagrad.step()  # accumulates G = g²
    for p in model.parameters():  # make G generic (one step's G = g² makes the A-norm the L1 norm of g)
        adagrad.state[p]["sum"].add_(torch.rand_like(p))
    closure()
    result = teleport(model, rot, steps=10, lr=50.0, norm="adagrad", optimizer=adagrad)
    assert all(b >= a for a, b in zip(result.history, result.history[1:]))
    assert result.gain - 1 > 1e3 * 10 * 16 * EPS, result.history  # far above F's round-off over 10 steps


def test_teleporting_never_changes_ddcadams_losses_but_changes_adamws():
    """DDCAdam is exactly equivariant and keeps its moments in canonical coordinates, so from ``g·θ`` it runs as ``g``
    times its run from ``θ``: the losses of 6 steps after a teleport equal those without it (the protocol's fp64
    bar). AdamW (the control) runs differently after the same teleport."""
    torch.manual_seed(1)
    base = tiny_gpt().double()
    batches = [torch.randint(0, base.vocab, (4, 17), generator=torch.Generator().manual_seed(k)) for k in range(9)]

    def run(make_opt, teleport_at: int | None):
        model = copy.deepcopy(base)
        binding = bind(model)
        opt = make_opt(model, binding)
        losses = []
        for k, idx in enumerate(batches):
            opt.zero_grad()
            loss = model.loss(idx[:, :-1], idx[:, 1:])
            loss.backward()
            if k == teleport_at:
                teleport(model, binding, steps=10, lr=0.3, optimizer=opt, state="teleport")
            opt.step()
            losses.append(float(loss.detach()))
        return losses

    ddc = lambda m, b: DDCAdam(m.parameters(), binding=b, lr=1e-2, weight_decay=0.1)  # noqa: E731
    adamw = lambda m, b: torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.1)  # noqa: E731
    plain, moved = run(ddc, None), run(ddc, 3)
    assert max(abs(a - b) / a for a, b in zip(plain, moved)) <= BAR, (plain, moved)
    plain, moved = run(adamw, None), run(adamw, 3)
    assert max(abs(a - b) / a for a, b in zip(plain, moved)) > 1e-6


def test_teleported_adam_state_is_the_state_of_the_new_gradient():
    """``state="teleport"`` moves AdamW's moments with the parameters: after one step from zero state, ``m = (1−β₁)g``
    and ``v = (1−β₂)g²``; teleported, they equal those of the gradient a backward pass at ``g·θ`` gives."""
    model, binding, closure = _prepared(next(c for c in CASES if c.name == "nanoGPT (flash)"))
    opt = torch.optim.AdamW(model.parameters(), lr=0.0, weight_decay=0.0)
    closure()
    opt.step()  # lr 0: the parameters stay, the moments are those of this gradient
    b1, b2 = opt.param_groups[0]["betas"]
    teleport(model, binding, steps=8, lr=0.3, optimizer=opt, state="teleport")
    closure()
    for _, p in binding.params:
        st = opt.state[p]
        scale = float(p.grad.abs().max())
        assert float((st["exp_avg"] - (1 - b1) * p.grad).abs().max()) <= BAR * scale
        assert float((st["exp_avg_sq"] - (1 - b2) * p.grad**2).abs().max()) <= BAR * scale**2


def test_bad_input_is_refused_before_anything_changes():
    model, binding, closure = _prepared(_llama())
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(GaugeError, match="has no gradient"):
        teleport(model, binding)
    closure()
    with pytest.raises(ValueError, match="pass optimizer="):
        teleport(model, binding, norm="adagrad")
    with pytest.raises(GaugeError, match="canonical coordinates"):
        teleport(model, binding, norm="adagrad", optimizer=DDCAdam(model.parameters(), binding=binding))
    next(p for _, p in binding.params).grad[0].fill_(math.nan)
    with pytest.raises(GaugeError, match="non-finite gradient"):
        teleport(model, binding)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))


def test_closed_form_ascent_is_autograd_ascent_on_a_hand_written_action():
    """For the abelian scalings, :func:`teleport`'s closed-form steps are the iteration ``ξ ← ξ + lr ∇ log F(e^ξ)``.
    Checked on the re-typed ``nn.Sequential`` MLP classifier (ReLU unit rescales; the CE shift changes no gradient)
    against :func:`ascend` on an objective written here from the definition: hidden unit ``k`` scales row ``k`` of
    ``W₁`` and ``b₁[k]`` by ``e^{ξ_k}`` and column ``k`` of ``W₂`` by ``e^{−ξ_k}``, so the gradient's rows and bias
    take ``e^{−ξ_k}`` and its column ``e^{ξ_k}``. Bound: 64 ε per step on log-scales of order 1, over 12 steps."""
    case = next(c for c in CASES if c.name == "nn.Sequential MLP classifier")
    model, binding, closure = _prepared(case)
    closure()
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 2
    w1, b1, w2 = linears[0].weight.grad.clone(), linears[0].bias.grad.clone(), linears[1].weight.grad.clone()
    assert {n for n, _ in binding.params} == {n for n, _ in model.named_parameters()}  # (b₂: the CE shift's)
    rest = float((linears[1].bias.grad ** 2).sum())  # the shift changes no gradient: a constant of F
    w1_before = linears[0].weight.detach().clone()

    def objective(xi):
        s = torch.exp(-xi[0])
        return ((w1 * s[:, None]) ** 2).sum() + ((b1 * s) ** 2).sum() + ((w2 / s[None, :]) ** 2).sum() + rest

    xi = [torch.zeros(w1.shape[0], dtype=w1.dtype)]
    want = ascend(objective, xi, steps=12, lr=0.3)
    got = teleport(model, binding, steps=12, lr=0.3)
    assert max(abs(a - b) / a for a, b in zip(want, got.history)) <= 64 * EPS * 12
    scale = linears[0].weight.detach() / w1_before  # the rows' factor e^{ξ_k}, read off the teleported weights
    assert float((scale.log() - xi[0][:, None]).abs().max()) <= 64 * EPS * 12


def test_teleported_rmsprop_and_amsgrad_state_is_the_state_of_the_new_gradient():
    """The rule per state key (``STATE_RULES``): one step at lr 0 from zero state leaves the state of this gradient
    (RMSprop, centred, with momentum: ``square_avg``, ``grad_avg`` and ``momentum_buffer = g/(√(square_avg −
    grad_avg²) + ε)``, a ratio a scaling leaves as it is up to ``ε``; AdamW with amsgrad: ``max_exp_avg_sq``).
    Teleported, each equals the state a fresh optimizer has after the same step at the teleported point, from the
    model's own gradient there. Bound: the protocol's fp64 bar, relative to the key's largest entry."""
    case = next(c for c in CASES if c.name == "nanoGPT (flash)")
    for make in (lambda ps: torch.optim.RMSprop(ps, lr=0.0, centered=True, momentum=0.9),
                 lambda ps: torch.optim.AdamW(ps, lr=0.0, amsgrad=True)):
        model, binding, closure = _prepared(case)
        opt = make(model.parameters())
        closure()
        opt.step()  # lr 0: parameters stay, state is that of this gradient
        teleport(model, binding, steps=6, lr=0.3, optimizer=opt, state="teleport")
        fresh = make(model.parameters())
        closure()
        fresh.step()
        for _, p in binding.params:
            for key, value in opt.state[p].items():
                if isinstance(value, torch.Tensor) and value.shape == p.shape:
                    want = fresh.state[p][key]
                    bound = BAR * float(want.abs().max()) + 1e-300
                    if key == "momentum_buffer":  # g/(s + ε) is scale-free only up to ε: |Δ| ≤ 2|buf| ε/s per entry
                        st = fresh.state[p]
                        s_ = (st["square_avg"] - st["grad_avg"] ** 2).clamp_min(0).sqrt()
                        bound = bound + 2 * want.abs() * 1e-8 / s_.clamp_min(1e-300)
                    assert bool(((value - want).abs() <= bound).all()), (type(opt).__name__, key)


def test_state_without_a_rule_is_refused_before_anything_changes():
    model, binding, closure = _prepared(_llama())
    opt = torch.optim.AdamW(model.parameters(), lr=0.0)
    closure()
    opt.step()
    p0 = next(p for _, p in binding.params)
    opt.state[p0]["custom"] = torch.zeros_like(p0)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(GaugeError, match="no rule for AdamW's state 'custom'"):
        teleport(model, binding, optimizer=opt, state="teleport")
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
