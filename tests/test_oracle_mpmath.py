"""mpmath at 50 digits as the oracle: identities that hold exactly must hold to ~1e-45.

float64 checks leave room for round-off; here invariance, the exact GD/heavy-ball charge
laws and the RoPE commutant are checked at 50 significant digits.
"""

import mpmath
import numpy as np
import pytest

from gaugemath.numeric import GroupSample, NumericGauge
from gaugemath.testing import numeric_gauge

TOL = mpmath.mpf(10) ** -40


def _mp(values):
    return np.array([mpmath.mpf(str(v)) for v in values], dtype=object)


def _problem(gauge: NumericGauge, seed: int):
    rng = np.random.default_rng(seed)
    theta = _mp(np.round(rng.normal(size=gauge.n), 6))
    inputs = {k: _mp(np.round(rng.normal(size=r * c), 6)).reshape(r, c) for k, (r, c) in gauge.input_shapes.items()}
    inputs = gauge.complete_inputs(inputs)
    targets = list(_mp(np.round(rng.normal(size=gauge.n_targets), 6)))
    values = tuple(mpmath.mpf("1.7") if k == "positive" else mpmath.mpf("0.6") for k in gauge.group_kinds)
    return theta, inputs, targets, GroupSample(values)


CASES = [("relu_rescale", {}), ("swiglu_rescale", {}), ("ce_shift", {}), ("norm_scale", {"kind": "layernorm"}),
         ("norm_scale", {"kind": "rmsnorm"}), ("norm_scale", {"kind": "producer"}), ("head_rotation", {}),
         ("head_rotation", {"rope": False})]


@pytest.mark.parametrize("name,opts", CASES, ids=[f"{n}-{o}" for n, o in CASES])
def test_loss_invariance_to_50_digits(name, opts):
    gauge = numeric_gauge(name, backend="mpmath", **opts)
    with mpmath.workdps(50):
        theta, inputs, targets, g = _problem(gauge, 1)
        a = gauge.loss(theta, inputs, targets)
        b = gauge.loss(gauge.act_flat(g, theta), inputs, targets)
        assert abs(a - b) <= TOL * max(1, abs(a))


@pytest.mark.parametrize("name", ["relu_rescale", "swiglu_rescale"])
def test_heavy_ball_charge_law_to_50_digits(name):
    gauge = numeric_gauge(name, backend="mpmath")
    eta, beta, k = mpmath.mpf("0.05"), mpmath.mpf("0.9"), mpmath.mpf("0.01")
    with mpmath.workdps(50):
        theta, inputs, targets, _ = _problem(gauge, 2)
        v = _mp(np.round(np.random.default_rng(3).normal(size=gauge.n), 6))
        grad = gauge.gradient(theta, inputs, targets)
        v_new = beta * v - eta * (grad + k * theta)
        th_new = theta + v_new
        q, q_new = gauge.charges(theta), gauge.charges(th_new)
        for c, (m, _b), qc, qn in zip(gauge.gauge.charges, gauge.charge_matrices, q, q_new, strict=True):
            mm = np.array([[mpmath.mpf(int(e)) for e in row] for row in m], dtype=object)
            j = v @ mm @ theta
            predicted = qc + 2 * (beta * j - eta * k * qc) + v_new @ mm @ v_new
            assert abs(qn - predicted) <= TOL, c.label
            # and the constraint it rests on: ⟨∇L, X_c⟩ = 0 to 50 digits
            assert abs(grad @ (mm @ theta)) <= TOL
