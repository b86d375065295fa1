"""DDCMuon: Muon + AdamW equivalence, the Newton–Schulz orthogonaliser's rotation equivariance, the protocol."""

from __future__ import annotations

import copy

import pytest
import sympy as sp

torch = pytest.importorskip("torch")

from gaugemath.backends.torch import DDCMuon, newton_schulz  # noqa: E402

import gaugemath.verify as V  # noqa: E402
from gaugemath.models import tiny_gpt  # noqa: E402

CONSTRUCTIONS = {c.name: c for c in V._constructions()}


def test_newton_schulz_step_commutes_with_orthogonal_maps_exactly():
    """One quintic step N(X) = aX + (bA + cA²)X, A = XXᵀ, as a non-commutative polynomial:
    N(PXQ) = P N(X) Q using only PᵀP = I and QQᵀ = I (any sizes); with ‖PXQ‖_F = ‖X‖_F (tested
    below) every iterate, hence Muon's orthogonaliser, commutes with rotations of rows and columns."""
    a, b, c = sp.symbols("a b c")
    p, x, q, pt, xt, qt = sp.symbols("P X Q Pt Xt Qt", commutative=False)

    def step(m, mt):
        gram = m * mt
        return a * m + (b * gram + c * gram * gram) * m

    moved = sp.expand(step(p * x * q, qt * xt * pt))
    assert sp.expand(moved - p * step(x, xt) * q) != 0  # the relations are needed (negative control)
    for _ in range(2):
        moved = sp.expand(moved.subs(q * qt, 1).subs(pt * p, 1))
    assert sp.expand(moved - p * step(x, xt) * q) == 0


def test_newton_schulz_rotation_equivariance_in_float64():
    gen = torch.Generator().manual_seed(0)
    m = torch.randn(6, 10, generator=gen, dtype=torch.float64)
    p, _ = torch.linalg.qr(torch.randn(6, 6, generator=gen, dtype=torch.float64))
    q, _ = torch.linalg.qr(torch.randn(10, 10, generator=gen, dtype=torch.float64))
    lhs = newton_schulz(p @ m @ q, dtype=torch.float64)
    rhs = p @ newton_schulz(m, dtype=torch.float64) @ q
    assert torch.allclose(lhs, rhs, atol=1e-12)
    assert torch.isclose(torch.linalg.norm(p @ m @ q), torch.linalg.norm(m))
    tall = newton_schulz((p @ m @ q).T.contiguous(), dtype=torch.float64)
    assert torch.allclose(tall, rhs.T, atol=1e-12)


def test_no_gauges_is_muon_plus_adamw_over_100_steps():
    torch.manual_seed(0)
    a = tiny_gpt()
    b = copy.deepcopy(a)

    def hidden(m):
        return [p for n, p in m.named_parameters() if p.dim() == 2 and "blocks" in n]

    def rest(m):
        return [p for n, p in m.named_parameters() if not (p.dim() == 2 and "blocks" in n)]

    ours = [DDCMuon(a.parameters(), lr=0.02, adam_lr=3e-3, muon_params=hidden(a))]
    peer = [torch.optim.Muon(hidden(b), lr=0.02), torch.optim.AdamW(rest(b), lr=3e-3, weight_decay=0.1)]
    gen = torch.Generator().manual_seed(1)
    for _ in range(100):
        idx = torch.randint(0, 11, (4, 9), generator=gen)
        for model, opts in ((a, ours), (b, peer)):
            for o in opts:
                o.zero_grad()
            model.loss(idx[:, :-1], idx[:, 1:]).backward()
            for o in opts:
                o.step()
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p, q, rtol=1e-6, atol=1e-7), n


@pytest.mark.parametrize("name", sorted(CONSTRUCTIONS))
def test_ddc_muon_protocol_fp64(name):
    assert V.run_protocol(CONSTRUCTIONS[name], "ddc_muon", "float64", steps=10) < 1e-12


@pytest.mark.parametrize("name", ["ce_shift", "relu_rescale", "swiglu_rescale", "norm_scale.rmsnorm",
                                  "head_rotation.rope", "head_rotation.norope", "transformer.rmsnorm_swiglu"])
def test_ddc_muon_protocol_fp32_and_muon_control(name):
    assert V.run_protocol(CONSTRUCTIONS[name], "ddc_muon", "float32", steps=20) < 1e-6
    assert V.run_protocol(CONSTRUCTIONS[name], "muon", "float32", steps=20) > 1e-3


def test_muon_params_must_be_matrices():
    model = tiny_gpt()
    with pytest.raises(ValueError, match="Muon needs matrices"):
        DDCMuon(model.parameters(), muon_params=[model.ln_f.weight])
