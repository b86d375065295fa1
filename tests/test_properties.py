"""Property tests on random widths, parameters and group elements (numpy float64).

Loss invariance, frame equivariance, projector identities, ⟨∇L, X_a⟩ = 0, the exact
discrete charge laws of theory.md §2.3–2.4 (E2, E3), and negative controls.
"""

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import gaugemath.testing as gt
from gaugemath.numeric import GroupSample


def _identity_component(g: GroupSample) -> GroupSample:
    return GroupSample(g.values, 0)


@given(st.data(), gt.catalogue_gauges())
def test_loss_invariance_frame_and_projectors(data, gauge):
    p = data.draw(gt.problems(gauge))
    gt.assert_invariant(lambda th: gauge.loss(th, p.inputs, p.targets), gauge, p.theta, p.g)
    gt.assert_frame_equivariant(gauge, p.theta, _identity_component(p.g))
    gt.assert_projector_identities(gauge, p.theta, p.g)


@given(st.data(), gt.catalogue_gauges())
def test_gradient_is_orthogonal_to_every_orbit_tangent(data, gauge):
    p = data.draw(gt.problems(gauge))
    grad, x = gauge.gradient(p.theta, p.inputs, p.targets), gauge.generators(p.theta)
    assert np.max(np.abs(grad @ x)) <= 1e-10 * max(1.0, np.max(np.abs(grad)) * np.max(np.abs(x)))


_CHARGED = ("relu_rescale", "swiglu_rescale", "norm_scale")


def _qm(gauge, theta):
    return [(float(theta @ m @ theta + 2 * b @ theta), m, b) for m, b in gauge.charge_matrices]


@given(st.data(), gt.catalogue_gauges(_CHARGED), st.floats(1e-3, 0.2), st.floats(0.0, 0.5))
def test_E2_gd_with_weight_decay_charge_law_is_exact(data, gauge, eta, k):
    """Q' = (1-ηk)²Q + η² gᵀMg for θ' = (1-ηk)θ - ηg, when b = 0 (theory.md §2.3, E2)."""
    p = data.draw(gt.problems(gauge))
    g = gauge.gradient(p.theta, p.inputs, p.targets)
    new = (1 - eta * k) * p.theta - eta * g
    q_new = gauge.charges(new)
    for (q, m, b), qn in zip(_qm(gauge, p.theta), q_new, strict=True):
        assert np.all(b == 0)
        predicted = (1 - eta * k) ** 2 * q + eta**2 * g @ m @ g
        assert abs(qn - predicted) <= 1e-12 * max(1.0, abs(q), float(np.abs(g).max()) ** 2)


@given(st.data(), gt.catalogue_gauges(_CHARGED), st.floats(1e-3, 0.2), st.floats(0.0, 0.95), st.floats(0.0, 0.3))
def test_E3_heavy_ball_recursions_are_exact(data, gauge, eta, beta, k):
    """v' = βv - η(g + kθ), θ' = θ + v'; J' = βJ - ηkQ + v'ᵀMv', Q' = Q + 2(βJ - ηkQ) + v'ᵀMv' (§2.4)."""
    p = data.draw(gt.problems(gauge))
    v = np.asarray(data.draw(st.lists(st.floats(-1, 1), min_size=gauge.n, max_size=gauge.n)))
    g = gauge.gradient(p.theta, p.inputs, p.targets)
    v_new = beta * v - eta * (g + k * p.theta)
    th_new = p.theta + v_new
    for (q, m, _), q_new in zip(_qm(gauge, p.theta), gauge.charges(th_new), strict=True):
        j, j_new = v @ m @ p.theta, v_new @ m @ th_new
        drive = beta * j - eta * k * q
        tol = 1e-12 * max(1.0, abs(q), float(np.abs(v_new).max()) ** 2, float(np.abs(p.theta).max()) ** 2)
        assert abs(j_new - (drive + v_new @ m @ v_new)) <= tol
        assert abs(q_new - (q + 2 * drive + v_new @ m @ v_new)) <= tol


def _drift(gauge, p, step, eta):
    return np.abs(gauge.charges(step(p, eta)) - gauge.charges(p.theta)).max()


def _gd(gauge):
    return lambda p, eta: p.theta - eta * gauge.gradient(p.theta, p.inputs, p.targets)


def _adamw(gauge, wd=0.1, eps=1e-12):
    # first AdamW step from zero moments: m̂ = g, v̂ = g², update = g/|g| (+ decoupled decay)
    def step(p, eta):
        g = gauge.gradient(p.theta, p.inputs, p.targets)
        return p.theta - eta * (g / (np.sqrt(g * g) + eps) + wd * p.theta)

    return step


@given(st.data(), gt.catalogue_gauges(("relu_rescale", "swiglu_rescale")))
def test_gd_drift_is_second_order_and_adamw_drift_is_first_order(data, gauge):
    """Negative control: GD drift scales as η² (ratio 4 when η halves); AdamW's as η (ratio ≈ 2)."""
    p = data.draw(gt.problems(gauge))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))  # generic point: no accidental cancellation
    p = gt.Problem(rng.normal(size=gauge.n), p.g, {k: rng.normal(size=v.shape) for k, v in p.inputs.items()},
                   tuple(rng.normal(size=len(p.targets))))
    assume(np.abs(gauge.gradient(p.theta, p.inputs, p.targets)).min() > 1e-3)  # every unit active
    eta = 1e-3
    gd = _drift(gauge, p, _gd(gauge), eta) / max(_drift(gauge, p, _gd(gauge), eta / 2), 1e-300)
    adamw_small = _drift(gauge, p, _adamw(gauge), eta / 2)
    adamw = _drift(gauge, p, _adamw(gauge), eta) / adamw_small
    if _drift(gauge, p, _gd(gauge), eta) > 1e-13:  # a vanishing gradient block gives no signal
        assert 3.5 < gd < 4.5
    assert adamw_small > 1e-6 and 1.5 < adamw < 2.6


@given(st.data(), gt.catalogue_gauges(("relu_rescale",)))
def test_adam_is_not_rescale_equivariant(data, gauge):
    """Negative control: Adam's per-coordinate normalisation does not commute with rescaling."""
    p = data.draw(gt.problems(gauge))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    p = gt.Problem(rng.normal(size=gauge.n), p.g, {k: rng.normal(size=v.shape) for k, v in p.inputs.items()},
                   tuple(rng.normal(size=len(p.targets))))
    assume(np.abs(gauge.gradient(p.theta, p.inputs, p.targets)).min() > 1e-3)  # every unit active
    g = GroupSample(tuple(3.0 if i % 2 == 0 else 0.4 for i in range(len(p.g.values))), 0)

    def adam(th):
        grad = gauge.gradient(th, p.inputs, p.targets)
        return th - 1e-2 * grad / (np.abs(grad) + 1e-12)

    with pytest.raises(AssertionError, match="relu_rescale.*not equivariant"):
        gt.assert_equivariant(adam, gauge, p.theta, g)


@given(st.data(), gt.catalogue_gauges(("head_rotation", "ce_shift")))
def test_gd_is_equivariant_under_isometric_gauges(data, gauge):
    p = data.draw(gt.problems(gauge))
    gt.assert_equivariant(lambda th: th - 0.1 * gauge.gradient(th, p.inputs, p.targets), gauge, p.theta, p.g)


def test_assertions_report_the_gauge_when_a_loss_is_not_invariant():
    gauge = gt.numeric_gauge("relu_rescale")
    theta = np.linspace(0.5, 1.5, gauge.n)
    with pytest.raises(AssertionError, match="gauge 'relu_rescale'.*loss not invariant"):
        gt.assert_invariant(lambda th: float(np.sum(th**2)), gauge, theta, GroupSample((2.0, 0.5)))
