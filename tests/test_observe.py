"""gaugemath.observe: each observable checked against something that can fail (the symbolic core's
charges, the exact discrete charge law of SGD, DDCAdam's horizontality, the LayerNorm kernel)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from gaugemath.backends.torch import DDCAdam, GaugeSpec, bind  # noqa: E402
from torch import nn  # noqa: E402

from gaugemath import catalogue  # noqa: E402
from gaugemath.models import MLP, tiny_gpt  # noqa: E402
from gaugemath.numeric import NumericGauge  # noqa: E402
from gaugemath.observe import (  # noqa: E402
    Observer,
    activation_spectrum,
    charges,
    dead_direction_rates,
    decay_rate,
    orbit_drift,
    vertical_parts,
)


class Blocks(nn.Module):
    """Parameters named like the symbolic core's blocks."""

    def __init__(self, values: dict[str, np.ndarray]):
        super().__init__()
        for name, v in values.items():
            self.register_parameter(name, nn.Parameter(torch.tensor(v, dtype=torch.float64)))


CASES = {
    "relu": (lambda: catalogue.relu_rescale(3, 4, 2),
             GaugeSpec("relu_rescale.balance", {"W_in": "W_in", "b_in": "b_in", "W_out": "W_out"})),
    "layernorm": (lambda: catalogue.norm_gain("layernorm", 3, 2),
                  GaugeSpec("norm_scale.layernorm", {"gain": "gain", "bias": "bias", "W": "W"})),
    "shift": (lambda: catalogue.ce_shift(4, 3), GaugeSpec("ce_shift", {"W": "W", "b": "b"})),
}


def _case(name: str, seed: int = 0):
    make, spec = CASES[name]
    num = NumericGauge(make())
    rng = np.random.default_rng(seed)
    values = {b: (v if m.cols > 1 else v[:, 0]) for b, m in num.gauge.blocks.items()
              for v in [rng.normal(size=(m.rows, m.cols))]}
    binding = bind(Blocks(values), [spec], check=False)  # catalogue blocks: no forward pass
    return num, values, binding


@pytest.mark.parametrize("name", sorted(CASES))
def test_charges_equal_the_symbolic_cores(name):
    num, values, binding = _case(name)
    theta = [p.detach() for _, p in binding.params]
    got = np.concatenate([q.numpy() for q in charges(binding, theta).values()])
    expected = np.asarray(num.charges(num.flatten(values)), dtype=float)
    np.testing.assert_allclose(np.sort(got), np.sort(expected), rtol=1e-12, atol=1e-12)
    assert len(got) == len(expected) > 0


def test_sgd_changes_each_charge_by_exactly_eta_squared_g_m_g():
    """Discrete law (theory.md): θ' = θ − ηg with ⟨X_k, g⟩ = 0 gives Q_k(θ') − Q_k(θ) = η² gᵀM_k g."""
    torch.manual_seed(0)
    model = MLP(4, 6, 3).double()
    binding = bind(model)
    x, y = torch.randn(16, 4, dtype=torch.float64), torch.randint(0, 3, (16,))
    nn.functional.cross_entropy(model(x), y).backward()
    theta = [p.detach().clone() for _, p in binding.params]
    grad = [p.grad.detach().clone() for _, p in binding.params]
    eta = 0.3
    q0 = charges(binding, theta)
    q1 = charges(binding, [t - eta * g for t, g in zip(theta, grad)])
    quadratic = {f.name: f.coords(grad, grad) for f in binding.families if f.kind in ("scale", "translate")}
    for name in q0:
        expected = eta**2 * quadratic[name] if any(f.name == name and f.kind == "scale" for f in binding.families) \
            else torch.zeros_like(q0[name])
        torch.testing.assert_close(q1[name] - q0[name], expected, rtol=1e-9, atol=1e-12)
        assert (q1[name] - q0[name]).abs().max() > 0 or name.startswith("head")


def test_orbit_drift_is_zero_on_the_slice_and_grows_along_the_orbit():
    _, _, binding = _case("relu", seed=1)
    theta = [p.detach().clone() for _, p in binding.params]
    fam = binding.families[0]
    fam.act(fam.frame(theta), theta)  # onto the canonical slice
    assert max(orbit_drift(binding, theta).values()) < 1e-14
    drifts = []
    for alpha in (1.5, 3.0, 6.0):  # rescale unit 0 by α: W_in row, b_in by α, W_out column by 1/α
        moved = [t.clone() for t in theta]
        w_in, b_in, w_out = (moved[binding.params.index(next(p for p in binding.params if p[0] == n))]
                             for n in ("W_in", "b_in", "W_out"))
        w_in[0] *= alpha
        b_in[0] *= alpha
        w_out[:, 0] /= alpha
        drifts.append(orbit_drift(binding, moved)[fam.name])
    assert 0 < drifts[0] < drifts[1] < drifts[2]


def _tiny():
    torch.manual_seed(0)
    model = tiny_gpt()
    idx = torch.randint(0, model.vocab, (4, 9))
    return model, bind(model), idx


def _one_step(model, opt, idx):
    before = [p.detach().double().clone() for p in model.parameters()]
    opt.zero_grad()
    model.loss(idx[:, :-1], idx[:, 1:]).backward()
    opt.step()
    return before


@pytest.mark.parametrize("which", ["ddcadam", "adamw"])
def test_vertical_fraction_separates_ddcadam_from_adamw(which):
    model, binding, idx = _tiny()
    opt = (DDCAdam(model.parameters(), binding=binding, lr=1e-2, weight_decay=0.1) if which == "ddcadam"
           else torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1))
    obs = Observer(model, binding, weights=False)
    for step in range(3):
        opt.zero_grad()
        model.loss(idx[:, :-1], idx[:, 1:]).backward()
        with obs.step(step):
            opt.step()
    fractions = [r["vertical_fraction"] for r in obs.records]
    if which == "ddcadam":
        assert max(fractions) < 1e-5  # horizontal up to fp32 round-off of the stored parameters
    else:
        assert min(fractions) > 1e-2


def test_a_purely_vertical_update_has_fraction_one():
    model, binding, _ = _tiny()
    theta = [p.detach().double().clone() for _, p in binding.params]
    fam = next(f for f in binding.families if f.kind == "scale")
    after = [t.clone() for t in theta]
    fam.lift(torch.full((fam.units,), 1e-3, dtype=torch.float64), theta, after)  # θ + ε Σ_k X_k(θ)
    total, parts = vertical_parts(binding, theta, after)
    assert total == pytest.approx(1.0, abs=1e-9)
    assert parts[fam.name] == pytest.approx(1.0, abs=1e-9)


def test_layernorm_inverse_gain_is_an_exact_kernel_and_rmsnorm_has_none():
    """arXiv 2606.19491: γ⁻¹/‖γ⁻¹‖ spans the kernel of the post-LayerNorm centred covariance; not RMSNorm's."""
    torch.manual_seed(0)
    x = torch.randn(512, 6, dtype=torch.float64)
    gain = 0.5 + torch.rand(6, dtype=torch.float64)
    for kind, dead in (("layernorm", True), ("rmsnorm", False)):
        norm = (nn.LayerNorm(6, dtype=torch.float64) if kind == "layernorm" else nn.RMSNorm(6, dtype=torch.float64))
        with torch.no_grad():
            norm.weight.copy_(gain)
            y = norm(x)
        spec = activation_spectrum(y)
        lam_max = float(torch.linalg.eigvalsh(torch.cov(y.T)).max())
        if dead:
            assert spec["lambda_min"] < 1e-12 * lam_max
            yc = y - y.mean(0)
            v = (1 / gain) / (1 / gain).norm()
            assert float((yc @ v).norm()) < 1e-10 * float(yc.norm())
        else:
            assert spec["lambda_min"] > 1e-3 * lam_max


def test_decay_rate_reads_a_power_law_and_refuses_noise():
    t = [float(s) for s in range(1, 200, 5)]
    read = decay_rate(t, [3.0 * s**-2.0 for s in t])
    assert read["rate"] == pytest.approx(2.0, rel=1e-9) and read["read"]
    rng = np.random.default_rng(0)
    flat = decay_rate(t, [float(v) for v in 1 + 0.1 * rng.random(len(t))])
    assert not flat["read"]
    assert not decay_rate([1.0, 2.0], [1.0, 0.5])["read"]


def test_observer_writes_jsonl_and_csv_and_reads_rates(tmp_path):
    model, binding, idx = _tiny()
    opt = DDCAdam(model.parameters(), binding=binding, lr=1e-2, weight_decay=0.1)
    obs = Observer(model, binding, path=tmp_path / "obs.jsonl", probe=idx[:, :-1], every=2)
    for step in range(6):
        opt.zero_grad()
        model.loss(idx[:, :-1], idx[:, 1:]).backward()
        with obs.step(step, loss=1.0):
            opt.step()
    obs.close()
    lines = [json.loads(line) for line in (tmp_path / "obs.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [0, 2, 4]
    first = lines[0]
    assert set(first["families"]) == {f.name for f in binding.families}
    scale = next(f.name for f in binding.families if f.kind == "scale")
    assert first["families"][scale]["charge_drift"] == 0.0 and lines[-1]["families"][scale]["charge_drift"] > 0
    assert "blocks.0.mlp.down" in first["activations"] and "head.weight" in first["weights"]
    header = (tmp_path / "obs.csv").read_text().splitlines()[0].split(",")
    assert f"families/{scale}/orbit_drift" in header and "vertical_fraction" in header
    rates = dead_direction_rates(lines)
    assert set(rates) == set(first["activations"]) and all(not math.isnan(r["r2"]) or not r["read"]
                                                             for r in rates.values())


def test_jax_observables_equal_the_torch_ones():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    from gaugemath.backends.jax import bind as jax_bind
    from gaugemath.backends.torch import detect

    from gaugemath import observe_jax
    from gaugemath.models.jax_models import from_torch

    model, binding, idx = _tiny()
    model.double()
    before = from_torch(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    _one_step(model, opt, idx)
    after = from_torch(model)
    jb = jax_bind(after, detect(model), check=False)
    theta = [p.detach() for _, p in binding.params]
    for name, q in charges(binding, theta).items():
        np.testing.assert_allclose(np.asarray(observe_jax.charges(jb, after)[name]), q.numpy(), rtol=1e-12)
    drift = observe_jax.orbit_drift(jb, after)
    for name, value in orbit_drift(binding, theta).items():
        assert float(drift[name]) == pytest.approx(value, rel=1e-9, abs=1e-15)
    torch_before = [torch.tensor(np.asarray(before[n])) for n, _ in binding.params]
    expected, _ = vertical_parts(binding, torch_before, theta)
    assert float(observe_jax.vertical_fraction(jb, before, after)) == pytest.approx(expected, rel=1e-9)
    assert expected > 1e-2
