"""Rotational equilibrium (seed 004; theory.md §3.6): the formulas against the seed's printed predictions, measured
equilibria against them on the seed's scale-invariant system, and the Rotational Wrapper's invariants."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from third_party import CASES

from gaugemath import GaugeError
from gaugemath.rotational import RotationalWrapper, RotationMeter, equilibrium, learnable_gain, rows


def test_formulas_give_the_seeds_predictions():
    """theory.md §4.2 S12, S14, S15 (the seed's settings, its predicted values to the digits printed)."""
    adamw = equilibrium("adamw", 1e-3, 0.1, 128)
    assert round(adamw.norm, 4) == 0.8000 and round(adamw.angular_update, 6) == 3.244e-3
    assert round(equilibrium("sgdm", 0.1, 5e-3, 128).angular_update, 5) == 2.294e-2
    lion = equilibrium("lion", 1e-4, 1.0, 128, betas=(0.9, 0.99))
    assert round(lion.norm, 3) == 0.538 and round(lion.angular_update, 5) == 2.10e-3
    with pytest.raises(ValueError, match="no equilibrium"):
        equilibrium("adamw", 3.0, 1.0, 8)


def _system(seed: int = 0, c: int = 128, k: int = 128):
    """[K] App. J's simple system with the gains fixed at 1: ``f(X) = BN(W X)`` (batch statistics, no affine), so
    every row of ``W`` is scale-invariant; random inputs and targets each step: a random walk."""
    torch.manual_seed(seed)
    w = torch.nn.Parameter(torch.randn(k, c) / math.sqrt(c))
    other = torch.nn.Parameter(torch.zeros(1))  # a non-rotational parameter in a group of its own

    def loss(gen, b: int = 32):
        x, y = torch.randn(b, c, generator=gen), torch.randn(b, k, generator=gen)
        h = x @ w.T
        h = (h - h.mean(0)) / (h.var(0, unbiased=False) + 1e-5).sqrt()
        return ((h - y) ** 2).mean() + other.sum() ** 2

    return w, other, loss


def _run(make, steps: int, wrap: bool = False, kind: str = "adamw"):
    w, other, loss = _system()
    inner = make([{"params": [w]}, {"params": [other], "weight_decay": 0.0}])
    opt = RotationalWrapper(inner, rows(w), inner_kind=kind) if wrap else inner
    meter, gen = RotationMeter(rows(w)), torch.Generator().manual_seed(1)
    for _ in range(steps):
        opt.zero_grad()
        loss(gen).backward()
        meter.before()
        opt.step()
        meter.after()
    return w, meter


@pytest.mark.parametrize("kind, make, lr, wd", [
    ("adamw", lambda g, lr, wd: torch.optim.AdamW(g, lr=lr, weight_decay=wd), 1e-2, 0.5),
    ("sgdm", lambda g, lr, wd: torch.optim.SGD(g, lr=lr, momentum=0.9, weight_decay=wd), 0.1, 5e-3),
])
def test_measured_angular_update_is_the_predicted_one(kind, make, lr, wd):
    """After 5 relaxation times (``1/(2ηλ)`` = 100 steps), the per-step angle of every row averages to the predicted
    ``η̂_r``. Bound: ``η̂_r`` relative, the first order the small-update theory neglects (``η_r ≈ η_g/‖ω‖``);
    measured 0.2 % (AdamW) and 0.4 % (SGDM)."""
    _, meter = _run(lambda g: make(g, lr, wd), 1000, kind=kind)
    pred = equilibrium(kind, lr, wd, 128).angular_update
    got = float(meter.summary(500)["angle"].mean())
    assert abs(got / pred - 1) <= pred, (got, pred)


def test_wrapper_rotates_at_the_equilibrium_rate_from_the_first_steps_on_a_fixed_sphere():
    """Wrapped AdamW: every row keeps its initial norm and is centred (to fp32 round-off, 8 ε) at every step (no
    norm transient), and it rotates at AdamW's ``η̂_r``. The angle is measured from step 500 of 1000: the wrapper's
    RMS tracker (β = 0.99) follows the inner Adam's update size, which settles over ~1/(1−β₂) steps (from steps
    100–600 the angle is 2.8 % low; from 500 on, 0.5 %). Bound on the angle as in the test above: ``η̂_r`` relative."""
    w0 = _system()[0].detach().clone()
    w, meter = _run(lambda g: torch.optim.AdamW(g, lr=1e-2, weight_decay=0.5), 1000, wrap=True)
    eps = torch.finfo(torch.float32).eps
    w = w.detach()
    assert float((w.norm(dim=1) / w0.norm(dim=1) - 1).abs().max()) <= 8 * eps
    assert float((w.mean(1).abs() / w.norm(dim=1)).max()) <= 8 * eps * math.sqrt(w.shape[1])
    assert float((w0.mean(1).abs() / w0.norm(dim=1)).max()) > 1e-3  # (it was not centred to begin with)
    pred = equilibrium("adamw", 1e-2, 0.5, 128).angular_update
    rms_angle = float(torch.stack([r["angle"] for r in meter.records[500:]]).pow(2).mean().sqrt())
    assert abs(rms_angle / pred - 1) <= pred, (rms_angle, pred)


def test_wrapper_state_resumes_and_bad_groups_are_refused():
    w, other, loss = _system()
    inner = torch.optim.AdamW([{"params": [w], "weight_decay": 0.5}, {"params": [other], "weight_decay": 0.0}], lr=1e-2)
    opt = RotationalWrapper(inner, rows(w))
    gen = torch.Generator().manual_seed(3)
    for _ in range(3):
        opt.zero_grad()
        loss(gen).backward()
        opt.step()
    saved, w_saved = copy.deepcopy(opt.state_dict()), w.detach().clone()  # (torch's state_dict holds references)
    gen2 = torch.Generator().manual_seed(4)
    opt.zero_grad()
    loss(gen2).backward()
    g = w.grad.clone()
    opt.step()
    after = w.detach().clone()
    with torch.no_grad():
        w.copy_(w_saved)
    w.grad = g
    again = RotationalWrapper(torch.optim.AdamW([{"params": [w], "weight_decay": 0.5},
                                                 {"params": [other], "weight_decay": 0.0}], lr=1e-2), rows(w))
    again.load_state_dict(saved)
    other.grad = torch.zeros_like(other)
    again.step()
    assert torch.equal(w.detach(), after)
    mixed = torch.optim.AdamW([w, other], lr=1e-2)
    with pytest.raises(GaugeError, match="groups of their own"):
        RotationalWrapper(mixed, rows(w))


def test_experiments_rvadamw_arm_keeps_the_hidden_rows_on_their_spheres():
    """``make_optimizer("rvadamw", …)`` (the experiments' arm): AdamW inside the wrapper with the rows of the hidden
    matrices (``hidden_matrices``: every ``nn.Linear`` but the head) as vectors; after 3 steps of a GPT their norms
    are the initial ones (8 ε, fp32) and the other parameters moved as AdamW moves them (changed)."""
    from gaugemath.experiments._common import OptimizerConfig, hidden_matrices, make_optimizer
    from gaugemath.models import tiny_gpt

    torch.manual_seed(0)
    model = tiny_gpt()
    mats = hidden_matrices(model)
    norms = [m.detach().norm(dim=1).clone() for m in mats]
    embed = model.embed.weight.detach().clone()
    opt = make_optimizer("rvadamw", model, OptimizerConfig(lr=1e-2, weight_decay=0.1))
    idx = torch.randint(0, model.vocab, (2, 9))
    for _ in range(3):
        opt.zero_grad()
        model.loss(idx[:, :-1], idx[:, 1:]).backward()
        opt.step()
    eps = torch.finfo(torch.float32).eps
    for m, n in zip(mats, norms):
        assert float((m.detach().norm(dim=1) / n - 1).abs().max()) <= 8 * eps
    assert not torch.equal(model.embed.weight.detach(), embed)


def test_learnable_gain_makes_rows_exactly_scale_invariant_on_hf_llama():
    """[K]'s learnable gain on HF Llama's projections (``W = g ⊙ ω/‖ω‖`` per row, ``learnable_gain``), judged by the
    model's own forward and backward passes (fp64): the function is unchanged at registration; scaling each row of
    ``ω`` by a positive factor leaves the loss unchanged (to 1e-13 relative: the only change is the rounding of
    ``ω/‖ω‖``, a few ε per entry through two layers); the gradient of each row of ``ω`` is orthogonal to it (the
    radial part, ``⟨∇ω, ω⟩/(‖∇ω‖‖ω‖)``, below 1e-12); the wrapper then keeps every row of ``ω`` on its sphere while
    the gains train; and a zero row is refused by name."""
    case = next(c for c in CASES if c.name == "llama")
    model = case.make()
    args, kwargs = case.batch(0)
    with torch.no_grad():
        before = float(case.loss(model, args, kwargs))
    layers = [(layer.mlp, "up_proj") for layer in model.model.layers] + \
             [(layer.self_attn, "q_proj") for layer in model.model.layers]
    pairs = [learnable_gain(getattr(mod, attr)) for mod, attr in layers]
    loss = case.loss(model, args, kwargs)
    assert float(loss.detach()) == pytest.approx(before, rel=1e-14)
    loss.backward()
    for omega, _ in pairs:
        g, w = omega.grad, omega.detach()
        radial = (g * w).sum(1).abs() / (g.norm(dim=1) * w.norm(dim=1))
        assert float(radial.max()) < 1e-12
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for omega, _ in pairs:
            omega.mul_(torch.exp(torch.randn(omega.shape[0], 1, generator=gen, dtype=omega.dtype)))
        assert float(case.loss(model, args, kwargs)) == pytest.approx(before, rel=1e-13)

    omegas, gains = [o for o, _ in pairs], [g for _, g in pairs]
    ids = {id(p) for p in omegas + gains}
    rest = [p for p in model.parameters() if id(p) not in ids]
    inner = torch.optim.AdamW([{"params": omegas, "weight_decay": 0.1}, {"params": gains, "weight_decay": 0.0},
                               {"params": rest}], lr=1e-3)
    opt = RotationalWrapper(inner, rows(*omegas), center=False)
    norms = [o.detach().norm(dim=1).clone() for o in omegas]
    g0 = [g.detach().clone() for g in gains]
    for t in range(5):
        a, k = case.batch(10 + t)
        opt.zero_grad()
        case.loss(model, a, k).backward()
        opt.step()
    for o, n in zip(omegas, norms):
        assert torch.allclose(o.detach().norm(dim=1), n, rtol=1e-12, atol=0)
    assert any(not torch.equal(g.detach(), g_0) for g, g_0 in zip(gains, g0))  # the gains learn the magnitude

    lin = torch.nn.Linear(3, 4).double()
    with torch.no_grad():
        lin.weight[2].zero_()
    with pytest.raises(GaugeError, match=r"rows \[2\] are zero"):
        learnable_gain(lin)
