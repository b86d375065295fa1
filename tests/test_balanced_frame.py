"""The jointly balanced frame (``frames="balanced"``) against an independent mpmath minimiser, and on
models nobody here wrote.

The oracle is written here from the definition alone (no library code): for the block
``LayerNorm(d) → Linear(d, h) → ReLU → Linear(h, c)`` the scalings are the gain channel ``i``
(``γ_i, β_i`` × ``e^{b_i}``, column ``i`` of ``W_in`` × ``e^{−b_i}``) and the hidden unit ``k``
(row ``k`` of ``W_in`` and ``b_in[k]`` × ``e^{a_k}``, column ``k`` of ``W_out`` × ``e^{−a_k}``), so
``W_in[k, i]`` carries ``e^{a_k − b_i}``: the two families are coupled. ``F(a, b) = Σ θ_j² e^{2 e_j·(a, b)}``
is minimised by Newton's method at 50 digits.
"""

from __future__ import annotations

import copy

import mpmath
import pytest
import torch
from gaugemath.backends.torch import DDCAdam, bind
from gaugemath.backends.torch.check import canonical_point
from third_party import CASES
from torch import nn

EPS = torch.finfo(torch.float64).eps


def _block(d: int = 3, h: int = 4, c: int = 2, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    m = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, h), nn.ReLU(), nn.Linear(h, c)).double()
    with torch.no_grad():  # generic, far from balanced: gains and biases of both signs and many sizes
        m[0].weight.copy_(torch.exp(2 * torch.randn(d)) * torch.sign(torch.randn(d)))
        m[0].bias.copy_(torch.randn(d))
        m[1].weight.mul_(torch.exp(torch.randn(h, 1)))
        m[3].weight.mul_(3.0)
    return m


def _oracle(m: nn.Sequential) -> dict[str, list]:
    """The balanced point of ``m``'s scalings at 50 digits (entries as nested lists of mpf)."""
    g, beta = m[0].weight.tolist(), m[0].bias.tolist()
    w_in, b_in, w_out = m[1].weight.tolist(), m[1].bias.tolist(), m[3].weight.tolist()
    d, h = len(g), len(b_in)
    with mpmath.workdps(50):
        # (value², exponent vector over the variables [a_0..a_{h-1}, b_0..b_{d-1}])
        terms = []
        for i in range(d):
            terms += [(mpmath.mpf(g[i]) ** 2, {h + i: 1}), (mpmath.mpf(beta[i]) ** 2, {h + i: 1})]
        for k in range(h):
            terms.append((mpmath.mpf(b_in[k]) ** 2, {k: 1}))
            for i in range(d):
                terms.append((mpmath.mpf(w_in[k][i]) ** 2, {k: 1, h + i: -1}))
            for r in range(len(w_out)):
                terms.append((mpmath.mpf(w_out[r][k]) ** 2, {k: -1}))
        n = h + d
        x = mpmath.matrix(n, 1)
        for _ in range(200):
            grad, hess = mpmath.matrix(n, 1), mpmath.matrix(n, n)
            for v, e in terms:
                w = v * mpmath.exp(2 * sum(c * x[j] for j, c in e.items()))
                for j, c in e.items():
                    grad[j] += 2 * c * w
                    for k2, c2 in e.items():
                        hess[j, k2] += 4 * c * c2 * w
            step = mpmath.lu_solve(hess, grad)
            x -= step
            if mpmath.norm(step) < mpmath.mpf(10) ** -45:
                break
        a = [mpmath.exp(x[k]) for k in range(h)]
        b = [mpmath.exp(x[h + i]) for i in range(d)]
        return {"gain": [g[i] * b[i] for i in range(d)], "bias": [beta[i] * b[i] for i in range(d)],
                "w_in": [[w_in[k][i] * a[k] / b[i] for i in range(d)] for k in range(h)],
                "b_in": [b_in[k] * a[k] for k in range(h)],
                "w_out": [[w_out[r][k] / a[k] for k in range(h)] for r in range(len(w_out))]}


def _canonical(m: nn.Module, binding) -> dict[str, torch.Tensor]:
    ents = binding.entries(binding.to_work([p.detach() for _, p in binding.params], torch.float64))
    canonical_point(binding, ents)
    return {n: binding.from_work(i, ents[i]) for i, (n, _) in enumerate(binding.params)}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_balanced_point_equals_an_independent_mpmath_minimiser(seed):
    m = _block(seed=seed)
    binding = bind(m, example=(torch.randn(5, 3, dtype=torch.float64),))
    assert sorted(f.family.gauge for f in binding.families) == ["norm_scale", "relu_rescale"]
    got = _canonical(m, binding)
    ref = _oracle(m)
    pairs = [("0.weight", "gain"), ("0.bias", "bias"), ("1.weight", "w_in"), ("1.bias", "b_in"), ("3.weight", "w_out")]
    # fp64: the sums of squares round at (n + 8)ε relative (n ≤ 8 terms per unit here), the log-scales
    # inherit that, amplified at most by cond(Γ) of the coupled Newton system (≤ 1e3 for these blocks)
    tol = (8 + 8) * EPS * 1e3
    for name, key in pairs:
        want = torch.tensor([[float(v) for v in row] for row in ref[key]] if isinstance(ref[key][0], list)
                            else [float(v) for v in ref[key]], dtype=torch.float64)
        assert torch.allclose(got[name], want, rtol=tol, atol=tol * float(want.abs().max())), (name, got[name], want)


def test_scaling_charges_vanish_at_the_balanced_point():
    """At the minimiser ``∇F = 2Xᵀθ̃ = 0``: every scaling charge ``Q_k = Σ_{e=+1} θ̃² − Σ_{e=−1} θ̃²`` is zero."""
    m = _block(seed=3)
    binding = bind(m, example=(torch.randn(5, 3, dtype=torch.float64),))
    ents = binding.entries(binding.to_work([p.detach() for _, p in binding.params], torch.float64))
    canonical_point(binding, ents)
    for fam in binding.families:
        q, gram = fam.coords(ents, ents), fam.gram(ents)
        assert float((q.abs() / gram).max()) <= 64 * EPS, fam.name  # Newton stops at ~ε relative (balance.py)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_balanced_point_is_invariant_under_the_hand_written_gauge(case):
    """``θ̃(g·θ) = θ̃(θ)`` with the hand-written ``g`` of tests/third_party.py (not the library's action), on
    every third-party model; ``√ε`` as in check.py (the fp64 transform and solve round at ~1e-14)."""
    from third_party import bind_case

    a = case.make()
    b = copy.deepcopy(a)
    case.transform(b, 5)
    ba, bb = bind_case(case, a), bind_case(case, b)
    assert ba.frames == "balanced"
    ca, cb = _canonical(a, ba), _canonical(b, bb)
    for name in ca:
        scale = float(ca[name].abs().max()) or 1.0
        assert float((ca[name] - cb[name]).abs().max()) <= EPS ** 0.5 * scale, (case.name, name)


def test_joint_solve_is_refused_loudly_when_it_does_not_converge(monkeypatch):
    """A Newton solve that runs out of iterations raises (nonfinite='raise') and changes nothing."""
    import gaugemath.backends.torch.balance as balance

    m = _block(seed=4)
    binding = bind(m, example=(torch.randn(5, 3, dtype=torch.float64),))
    opt = DDCAdam(m.parameters(), binding=binding, lr=1e-2)
    m(torch.randn(5, 3, dtype=torch.float64)).sum().backward()
    before = [p.detach().clone() for p in m.parameters()]
    monkeypatch.setattr(balance, "MAX_NEWTON", 1)
    from gaugemath import GaugeError

    with pytest.raises(GaugeError, match="did not converge"):
        opt.step()
    assert all(torch.equal(p, q) for p, q in zip(m.parameters(), before))
    assert not opt.state or all(not s for s in opt.state.values())


def _trained_pair(seed: int = 6, steps: int = 4):
    """A coupled block after ``steps`` DDCAdam steps (so the balance has a warm start), and its loss."""
    m = _block(seed=seed)
    binding = bind(m, example=(torch.randn(5, 3, dtype=torch.float64),))
    opt = DDCAdam(m.parameters(), binding=binding, lr=1e-2)
    gen = torch.Generator().manual_seed(seed)

    def loss():
        x = torch.randn(7, 3, dtype=torch.float64, generator=gen)
        return torch.nn.functional.cross_entropy(m(x), torch.arange(7) % 2)

    for _ in range(steps):
        opt.zero_grad()
        loss().backward()
        opt.step()
    return m, opt, loss


def test_warm_start_is_only_a_starting_point():
    """The joint balance starts Newton from last step's log-scales (state ``balance.<family>``), but the frame
    is still the minimiser of ``F`` at ``θ``: a step from a corrupted warm start (every log-scale moved by
    0.3, or zeroed) or from none (a checkpoint without it) gives the step of the intact one. Bound: both
    Newton solves stop at the round-off floor (64 ε in log-scale, balance.FLOOR), which the step inherits
    relative to ``θ``, times cond(Γ) ≤ 1e3."""
    m, opt, loss = _trained_pair()
    warm = {k: v for st in opt.state.values() for k, v in st.items() if k.startswith("balance.")}
    assert warm and all(bool(torch.isfinite(v).all()) and bool(v.abs().max() > 0) for v in warm.values())
    opt.zero_grad()
    loss().backward()
    grads = [p.grad.clone() for p in m.parameters()]
    results = []
    for corrupt in (None, lambda v: v + 0.3, torch.zeros_like, "absent"):
        mc, oc = copy.deepcopy(m), None
        oc = DDCAdam(mc.parameters(), binding=bind(mc, example=(torch.randn(5, 3, dtype=torch.float64),)), lr=1e-2)
        saved = copy.deepcopy(opt.state_dict())
        if corrupt == "absent":  # a checkpoint saved before this state existed: the closed form is the start
            for st in saved["state"].values():
                for k in [k for k in st if k.startswith("balance.")]:
                    del st[k]
            corrupt = None
        oc.load_state_dict(saved)
        if corrupt is not None:
            for st in oc.state.values():
                for k in [k for k in st if k.startswith("balance.")]:
                    st[k] = corrupt(st[k])
        for p, g in zip(mc.parameters(), grads):
            p.grad = g.clone()
        oc.step()
        results.append([p.detach().clone() for p in mc.parameters()])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert float((a - b).abs().max()) <= 64 * EPS * 1e3 * float(a.abs().max()), (a, b)


def test_checkpoint_carries_the_warm_start():
    """The balance's log-scales are optimizer state: a resumed run steps bit for bit as the uninterrupted one."""
    m, opt, loss = _trained_pair(seed=7)
    mc = copy.deepcopy(m)
    oc = DDCAdam(mc.parameters(), binding=bind(mc, example=(torch.randn(5, 3, dtype=torch.float64),)), lr=1e-2)
    oc.load_state_dict(copy.deepcopy(opt.state_dict()))
    opt.zero_grad()
    loss().backward()
    for p, q in zip(mc.parameters(), m.parameters()):
        p.grad = q.grad.clone()
    opt.step()
    oc.step()
    assert all(torch.equal(p, q) for p, q in zip(m.parameters(), mc.parameters()))


def test_a_warm_start_of_another_binding_is_refused_by_name():
    """A checkpoint whose balance state has another number of units (another binding) is refused at
    ``load_state_dict`` naming the parameter and the key, not at the next step."""
    from gaugemath import GaugeError

    m, opt, _ = _trained_pair(seed=8)
    saved = copy.deepcopy(opt.state_dict())
    st = next(st for st in saved["state"].values() if any(k.startswith("balance.") for k in st))
    key = next(k for k in st if k.startswith("balance."))
    st[key] = torch.zeros(st[key].numel() + 1, dtype=st[key].dtype)
    mc = copy.deepcopy(m)
    oc = DDCAdam(mc.parameters(), binding=bind(mc, example=(torch.randn(5, 3, dtype=torch.float64),)), lr=1e-2)
    with pytest.raises(GaugeError, match=f"state '{key}' has shape"):
        oc.load_state_dict(saved)
